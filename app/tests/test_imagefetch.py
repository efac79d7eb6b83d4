"""The SSRF guard of the image fetch, against a real HTTP server on loopback: the request goes to
the address that was checked, whatever the name resolves to afterwards."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from catalogue import imagefetch


class Recorder(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.server.hosts.append(self.headers["Host"])
        if self.path.startswith("/hop"):
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.hosts = []
    httpd.redirect_to = ""
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


class Rebinding:
    """Answers `first` once, then `later`: what an attacker's DNS server does."""

    def __init__(self, first: list[str], later: list[str]) -> None:
        self.answers = [first]
        self.later = later
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return self.answers.pop(0) if self.answers else self.later


@pytest.fixture
def no_system_resolver(monkeypatch):
    """Any lookup of the test's names outside the resolver under test fails the test."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".test"):
            pytest.fail(f"{host} was resolved again, after it was checked")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    server, no_system_resolver
):
    port = server.server_address[1]
    # Checked: loopback (allowed here); any later answer would be the data tier.
    resolver = Rebinding(["127.0.0.1"], ["10.0.2.11"])
    result = imagefetch.fetch(
        f"http://images.test:{port}/a.png", 2, allow_private=True, resolver=resolver
    )
    assert result.outcome == "ok", result.error
    assert resolver.asked == ["images.test"]
    assert server.hosts == [f"images.test:{port}"]


def test_a_name_rebound_to_a_private_address_is_refused_on_the_next_hop(server, no_system_resolver):
    """The first hop's check passes and that hop is fetched; the redirect names the same host,
    which now answers with an internal address: refused before any connection."""
    port = server.server_address[1]
    server.redirect_to = f"http://images.test:{port}/a.png"
    resolver = Rebinding(["127.0.0.1"], ["10.0.2.11"])
    deny = imagefetch.parse_networks(["10.0.2.0/24"])
    result = imagefetch.fetch(
        f"http://images.test:{port}/hop", 2, allow_private=True, resolver=resolver, deny=deny
    )
    assert (result.outcome, result.retryable) == ("refused", False)
    assert len(server.hosts) == 1
    assert "10.0.2.11" not in str(result.public())
    assert result.public()["error"] == "fetch failed: refused"


def test_a_name_with_one_internal_address_among_public_ones_is_refused(server):
    resolver = Rebinding(["93.184.216.34", "10.0.0.5"], [])
    result = imagefetch.fetch("http://mixed.test/a.png", 2, resolver=resolver)
    assert result.outcome == "refused"
    assert server.hosts == []


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "64:ff9b::a00:20b",  # NAT64 of 10.0.2.11
        "64:ff9b:1::1",
        "2002:a00:20b::1",  # 6to4 of 10.0.2.11
        "2001:0:4136:e378::1",  # Teredo
        "::ffff:10.0.2.11",  # IPv4-mapped
        "fd12:3456::1",  # unique local
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_translated_link_local_and_local_addresses_are_refused_even_where_private_is_allowed(
    address,
):
    assert imagefetch.refusal(address, allow_private=False) != ""
    if not address.startswith(("fd", "::ffff:")):  # those are private addresses like any other
        assert imagefetch.refusal(address, allow_private=True) != ""


def test_every_address_of_the_deployment_is_refused_even_where_private_is_allowed():
    deny = imagefetch.parse_networks(["10.0.2.11", "10.0.3.0/24", "2001:db8::5"])
    for address in ("10.0.2.11", "10.0.3.12", "2001:db8::5", "::ffff:10.0.2.11"):
        assert imagefetch.refusal(address, allow_private=True, deny=deny), address
    assert imagefetch.refusal("10.0.2.12", allow_private=True, deny=deny) == ""
    assert imagefetch.refusal("93.184.216.34", allow_private=False, deny=deny) == ""


def test_https_keeps_the_name_for_sni_and_the_certificate_check():
    """The pinned pool dials the address but verifies the certificate for the URL's name."""
    import requests  # noqa: PLC0415

    adapter = imagefetch.PinnedAdapter("93.184.216.34")
    request = requests.Request("HEAD", "https://images.example.org/a.png").prepare()
    host_params, pool_kwargs = adapter.build_connection_pool_key_attributes(request, True)
    assert (host_params["scheme"], host_params["host"]) == ("https", "93.184.216.34")
    assert pool_kwargs["server_hostname"] == "images.example.org"
    assert pool_kwargs["assert_hostname"] == "images.example.org"
    assert pool_kwargs["cert_reqs"] == "CERT_REQUIRED"
