"""nginx keys its request limits by client: an IPv4 address, or the /64 of an IPv6 address.

The map in the nginx role's site template is read as written and applied the way nginx applies
a map (regexes in order, the first match wins, `$1` is its first group) to $binary_remote_addr,
the packed address. PCRE's `\\z` is Python's `\\Z` and Python wants `(?s)` first; the rest of
the patterns means the same in both. Checked with nginx 1.22 too: a second address of a /64 was
refused by a 1r/m zone, another /64 and another IPv4 address were not. The end-to-end check with
real addresses is tests/infra/test_web.py's test_two_ipv6_addresses_in_one_64_share_a_write_limit.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from preflight import ROOT

TEMPLATE = ROOT / "roles/nginx/templates/etc/nginx/sites-available/catalogue.conf.j2"


def client_map() -> list[tuple[re.Pattern[bytes] | None, str]]:
    text = TEMPLATE.read_text()
    block = re.search(r"map \$binary_remote_addr \$\{\{ site \}\}_client \{\n(.*?)\n\}", text, re.S)
    assert block, "the template has no client map over $binary_remote_addr"
    entries = []
    for line in block.group(1).splitlines():
        source, value = line.strip().rstrip(";").rsplit(None, 1)
        if source == "default":
            entries.append((None, value))
        else:
            pattern = source.strip('"').removeprefix("~").replace(r"\z", r"\Z")
            pattern = pattern.replace("^(?s)", "(?s)^")  # Python wants global flags first
            entries.append((re.compile(pattern.encode("latin-1")), value))
    return entries


def key(address: str) -> bytes:
    packed = ipaddress.ip_address(address).packed
    for pattern, value in client_map():
        match = pattern.search(packed) if pattern else None
        if pattern is None or match:
            if value == "$1":
                return match.group(1)
            assert value == "$binary_remote_addr", value
            return packed
    raise AssertionError("no default in the map")


def test_two_addresses_in_one_ipv6_64_share_a_key():
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:eeee:dddd:cccc")
    assert key("2001:db8:1:2::1") == ipaddress.ip_address("2001:db8:1:2::").packed[:8]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:3::1"),  # the next /64
        ("192.0.2.1", "192.0.2.2"),  # IPv4: the whole address
        ("::ffff:192.0.2.1", "::ffff:192.0.2.2"),  # IPv4-mapped: not one ::ffff:0:0/64
        ("::ffff:192.0.2.1", "::1"),
        ("2001:db8:a0a:a0a::1", "2001:db8:a0a:a0b::1"),  # newline bytes (0x0a) in the prefix
    ],
)
def test_other_clients_get_other_keys(one, other):
    assert key(one) != key(other)


def test_ipv4_keys_are_the_address():
    assert key("192.0.2.1") == bytes([192, 0, 2, 1])
    assert key("::ffff:192.0.2.1") == ipaddress.ip_address("::ffff:192.0.2.1").packed


def test_every_limit_zone_uses_the_client_key():
    text = TEMPLATE.read_text()
    assert "$binary_remote_addr;" not in re.sub(
        r"map \$binary_remote_addr .*?\n\}", "", text, flags=re.S
    ), "a limit still keys on the full address"
    zones = re.findall(r"limit_req_zone \$(.+?) zone=", text)
    assert zones == ["{{ site }}_write_client", "{{ site }}_search_client"]
