"""Bearer tokens for the API's writes.

Only SHA-256 digests of the tokens are configured (settings.CATALOGUE_API_TOKEN_HASHES, entries
`name:hexdigest`): the environment file grants nothing to whoever reads it. The tokens are long
random strings (the vault's), so a fast hash compared in constant time is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse

DIGEST = re.compile(r"[0-9a-f]{64}")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def configured() -> list[tuple[str, str]]:
    """(name, digest) of every configured token; a malformed entry is a configuration error."""
    entries = []
    for entry in settings.CATALOGUE_API_TOKEN_HASHES:
        name, _, hexdigest = entry.rpartition(":")
        if not DIGEST.fullmatch(hexdigest):
            raise ImproperlyConfigured(
                "CATALOGUE_API_TOKEN_HASHES entries are name:sha256-hex-digest"
            )
        entries.append((name or "token", hexdigest))
    return entries


def client_of(request: HttpRequest) -> str | None:
    """The name of the token the request carries, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    offered = digest(token)
    found = None
    for name, hexdigest in configured():  # every entry compared: no early exit to time
        if hmac.compare_digest(offered, hexdigest):
            found = name
    return found


def token_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """401 before the view runs (so nothing is read or stored) unless a known token is sent."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        client = client_of(request)
        if client is None:
            response = JsonResponse({"error": "a valid API token is required"}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="catalogue"'
            return response
        request.api_client = client  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return wrapped
