"""Fetch an image URL's metadata (HEAD, or a GET whose body is never read)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

MAX_REDIRECTS = 3
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
HEAD_UNSUPPORTED = frozenset({405, 501})
_REDIRECT_MIN, _REDIRECT_MAX = 300, 400
_OK_MIN, _OK_MAX = 200, 300

Resolver = Callable[[str], list[str]]


@dataclass
class FetchResult:
    outcome: str  # ok, http_error, unreachable, refused, invalid
    retryable: bool
    url: str
    status_code: int | None = None
    content_type: str = ""
    content_length: int | None = None
    error: str = ""
    hops: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fetch(  # noqa: PLR0911 - one early return per outcome
    url: str,
    timeout: float,
    allow_private: bool = False,
    session: requests.Session | None = None,
    resolver: Resolver = resolve,
) -> FetchResult:
    """One attempt. Never raises: the outcome says whether another attempt may help.

    Redirects are followed by hand (at most MAX_REDIRECTS) so that every hop's address is
    checked; a host resolving to a private, loopback or link-local address is refused unless
    `allow_private` (the check is advisory against DNS rebinding, not a sandbox).
    """
    session = session or requests.Session()
    hops: list[str] = []
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            return FetchResult("invalid", False, current, error="not an http(s) URL", hops=hops)
        if not allow_private:
            try:
                addresses = resolver(parts.hostname)
            except OSError as exc:
                return FetchResult("unreachable", True, current, error=str(exc), hops=hops)
            if not addresses or not all(is_public(a) for a in addresses):
                return FetchResult(
                    "refused", False, current, error="resolves to a non-public address", hops=hops
                )
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
