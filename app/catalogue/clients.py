"""Who a request comes from, as far as limits and counting are concerned.

An IPv6 client is keyed by its /64: a single host is usually handed a whole /64 and may pick a
new address in it for every request (privacy addresses), so a limit keyed by the full address
limits nothing. An IPv4 client is keyed by its full address. nginx keys its request limits the
same way (roles/nginx, the `*_client` maps), so both layers agree on what one client is.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def address_of(request: HttpRequest) -> str:
    """The client's address as nginx saw it (X-Real-IP), else the peer's (a direct connection)."""
    return request.META.get(settings.CATALOGUE_CLIENT_ADDRESS_HEADER) or request.META.get(
        "REMOTE_ADDR", ""
    )


def client_key(address: str) -> str:
    """`192.0.2.1` -> `192.0.2.1`; `2001:db8:1:2:a::1` -> `2001:db8:1:2::/64`; an IPv4-mapped
    IPv6 address is the IPv4 client it stands for. Anything unparsable is its own key."""
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # a zone id names no other client
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def key_of(request: HttpRequest) -> str:
    return client_key(address_of(request))
