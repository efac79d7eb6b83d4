"""One client for limits and counting: an IPv4 address, or an IPv6 /64."""

import pytest
from django.test import RequestFactory

from catalogue.clients import client_key, key_of


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.2", "192.0.2.2"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:0db8:0001:0002:0000:0000:0000:0009", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::1", "::/64"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_ipv4_is_keyed_by_its_address_and_ipv6_by_its_64(address, key):
    assert client_key(address) == key


def test_addresses_in_one_64_share_a_key_and_the_next_64_does_not():
    assert client_key("2001:db8:a:b:1::1") == client_key("2001:db8:a:b:2222:3333:4444:5555")
    assert client_key("2001:db8:a:b::1") != client_key("2001:db8:a:c::1")
    assert client_key("192.0.2.1") != client_key("192.0.2.2")


def test_the_key_comes_from_the_address_nginx_passes_on(settings):
    """nginx sends the client's address in X-Real-IP; gunicorn's peer (REMOTE_ADDR) is nginx."""
    factory = RequestFactory()
    behind_nginx = factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_REAL_IP="2001:db8:5:6:7::8")
    assert key_of(behind_nginx) == "2001:db8:5:6::/64"
    direct = factory.get("/", REMOTE_ADDR="2001:db8:5:6:9::1")
    assert key_of(direct) == "2001:db8:5:6::/64"
    settings.CATALOGUE_CLIENT_ADDRESS_HEADER = "HTTP_X_FORWARDED_FOR_CLIENT"
    assert key_of(behind_nginx) == "10.0.0.5"
