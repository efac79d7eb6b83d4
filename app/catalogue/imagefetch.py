"""Fetch an image URL's metadata (HEAD, or a GET whose body is never read), connecting only to
an address that was checked.

Each hop's host name is resolved once; every address it gives must be allowed (see `refusal`),
and the request then goes to that very address: a transport adapter dials it and sends the
URL's own name in Host and in TLS (SNI and the certificate check). A name that answers
differently the second time (DNS rebinding) is never asked again. Proxies from the environment
are ignored for the same reason.

What a client may see of a failed fetch is its category ("fetch failed: unreachable"), never
the error text, which can name internal hosts and ports: FetchResult.public() is what is kept
in the history; the full error goes to the worker's log.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

MAX_REDIRECTS = 3
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
HEAD_UNSUPPORTED = frozenset({405, 501})
_REDIRECT_MIN, _REDIRECT_MAX = 300, 400
_OK_MIN, _OK_MAX = 200, 300
_DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str], list[str]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused even where private addresses are allowed: link-local (cloud metadata services),
# and the IPv6 prefixes that carry an IPv4 address to somewhere else (NAT64, 6to4, Teredo,
# IPv4-mapped), which Python may count as global.
ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "fe80::/10",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
        "2001::/32",
        "::ffff:0:0/96",
        "::/128",
    )
)
# Private unless allowed: unique local IPv6 is named here as Python's is_private covers it only
# in recent versions.
_PRIVATE: tuple[Network, ...] = (ipaddress.ip_network("fc00::/7"),)


@dataclass
class FetchResult:
    outcome: str  # ok, http_error, unreachable, refused, invalid
    retryable: bool
    url: str
    status_code: int | None = None
    content_type: str = ""
    content_length: int | None = None
    error: str = ""  # internal detail: logged, never shown to clients
    hops: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What clients may see: the category of a failure, not its detail."""
        shown = {
            "outcome": self.outcome,
            "retryable": self.retryable,
            "url": self.url if not self.hops else self.hops[0],
            "redirects": len(self.hops),
        }
        if self.outcome == "ok":
            return shown | {
                "status_code": self.status_code,
                "content_type": self.content_type,
                "content_length": self.content_length,
            }
        return shown | {"error": f"fetch failed: {self.outcome}"}


def resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (10.0.2.11, 10.0.2.0/24, fd00::/8) as networks."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry)


def refusal(address: str, allow_private: bool, deny: tuple[Network, ...] = ()) -> str:
    """Why `address` may not be fetched from ("" when it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in net for net in deny if net.version == ip.version):
        return "an address of this deployment"
    if any(ip in net for net in ALWAYS_REFUSED if net.version == ip.version):
        return "a link-local or translated address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "a reserved address"
    if ip.is_global and not any(ip in net for net in _PRIVATE if net.version == ip.version):
        return ""
    return "" if allow_private else "a non-public address"


def is_public(address: str) -> bool:
    return refusal(address, allow_private=False) == ""


class PinnedAdapter(HTTPAdapter):
    """Connects to `address` whatever the URL's host resolves to now; Host, SNI and the
    certificate check keep the URL's own name."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        name = urlsplit(request.url).hostname
        host_params["host"] = self.address
        if host_params["scheme"] == "https":
            pool_kwargs |= {"server_hostname": name, "assert_hostname": name}
        return host_params, pool_kwargs

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any):
        request.headers["Host"] = urlsplit(request.url).netloc.rpartition("@")[2]
        return super().send(request, *args, **kwargs)


def pinned_session(address: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # an environment proxy would resolve the name again
    adapter = PinnedAdapter(address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _vet(host: str, allow_private: bool, deny: tuple[Network, ...], resolver: Resolver) -> str:
    """The address to connect to; raises OSError when the name does not resolve and
    PermissionError when any of its addresses is refused."""
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        addresses = resolver(host)
    if not addresses:
        raise OSError(f"{host} has no address")
    reasons = {refusal(a, allow_private, deny) for a in addresses} - {""}
    if reasons:
        raise PermissionError(f"{host} resolves to {', '.join(sorted(reasons))}")
    return addresses[0]


def fetch(  # noqa: PLR0911 - one early return per outcome
    url: str,
    timeout: float,
    allow_private: bool = False,
    session_for: Callable[[str], Any] = pinned_session,
    resolver: Resolver = resolve,
    deny: tuple[Network, ...] = (),
) -> FetchResult:
    """One attempt. Never raises: the outcome says whether another attempt may help.

    Redirects are followed by hand (at most MAX_REDIRECTS): every hop's name is resolved and
    checked, and that hop is fetched from the address checked (`session_for(address)`).
    """
    hops: list[str] = []
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return FetchResult("invalid", False, current, error="not an http(s) URL", hops=hops)
        try:
            address = _vet(parts.hostname, allow_private, deny, resolver)
        except PermissionError as exc:
            return FetchResult("refused", False, current, error=str(exc), hops=hops)
        except OSError as exc:
            return FetchResult("unreachable", True, current, error=str(exc), hops=hops)
        session = session_for(address)
        try:
            response = session.head(current, timeout=timeout, allow_redirects=False)
            if response.status_code in HEAD_UNSUPPORTED:
                response = session.get(current, timeout=timeout, allow_redirects=False, stream=True)
                response.close()
        except requests.RequestException as exc:
            return FetchResult("unreachable", True, current, error=str(exc)[:500], hops=hops)
        status = response.status_code
        if _REDIRECT_MIN <= status < _REDIRECT_MAX and response.headers.get("Location"):
            hops.append(current)
            current = urljoin(current, response.headers["Location"])
            continue
        if _OK_MIN <= status < _OK_MAX:
            return FetchResult(
                "ok",
                False,
                current,
                status_code=status,
                content_type=response.headers.get("Content-Type", "")[:255],
                content_length=_content_length(response.headers.get("Content-Length")),
                hops=hops,
            )
        return FetchResult(
            "http_error", status in RETRY_STATUSES, current, status_code=status, hops=hops
        )
    return FetchResult("http_error", False, current, error="too many redirects", hops=hops)
