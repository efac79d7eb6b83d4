"""Read settings from the environment; a missing required variable stops start-up by name."""

from __future__ import annotations

import os
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured

_MISSING = object()


def env(name: str, default: object = _MISSING) -> str:
    """Return the variable, or `default`; without a default an unset or empty one is an error."""
    value = os.environ.get(name, "")
    if value == "":
        if default is _MISSING:
            raise ImproperlyConfigured(f"Set the environment variable {name}")
        return str(default)
    return value


def env_int(name: str, default: int | object = _MISSING) -> int:
    raw = env(name, default)
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float | object = _MISSING) -> float:
    raw = env(name, default)
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool = False) -> bool:
    raw = env(name, "true" if default else "false").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def url_with_credentials(
    scheme: str, host: str, port: int, user: str, password: str, path: str = ""
) -> str:
    """Build scheme://user:password@host:port/path with the credentials percent-encoded."""
    auth = ""
    if user or password:
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{scheme}://{auth}{host}:{port}/{path}"
