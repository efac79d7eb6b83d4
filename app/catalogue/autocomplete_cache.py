"""The autocomplete cache: answers kept for CATALOGUE_AUTOCOMPLETE_TTL seconds, yet a new product
shows up in a hot prefix as soon as Elasticsearch can find it.

Answers are cached under the index's generation, a token in the cache that the indexing task
replaces whenever a document appears in the index or leaves it: every reader moves to new, empty
keys at once. Elasticsearch makes a document searchable at its next refresh, up to a second after
it was indexed, so a process does not cache for CATALOGUE_AUTOCOMPLETE_SETTLE seconds after it
first sees a generation: whatever is cached under it was looked up after that refresh. The
window runs on each process's own clock, so the clocks of different hosts are never compared.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from time import monotonic

from django.conf import settings
from django.core.cache import cache

GENERATION_KEY = "autocomplete:generation"
_lock = threading.Lock()
_first_seen: tuple[str, float] = ("", 0.0)  # (generation, monotonic time this process saw it)


def generation() -> str:
    return str(cache.get(GENERATION_KEY) or "0")


def bump() -> None:
    """Retire every cached answer. A fresh random token, not a counter: it cannot collide with a
    generation whose answers are still cached, even after Redis lost the key."""
    cache.set(GENERATION_KEY, uuid.uuid4().hex[:16], timeout=None)


def key(q: str, gen: str) -> str:
    return f"autocomplete:{gen}:" + hashlib.sha256(q.lower().encode()).hexdigest()


def settled(gen: str) -> bool:
    """Whether an answer looked up now may be cached under `gen`."""
    global _first_seen  # noqa: PLW0603 - one small record per process, shared by its threads
    now = monotonic()
    with _lock:
        if _first_seen[0] != gen:
            _first_seen = (gen, now)
        return now - _first_seen[1] >= settings.CATALOGUE_AUTOCOMPLETE_SETTLE
