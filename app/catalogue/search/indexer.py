"""Keep the products alias in step with PostgreSQL: single documents, full rebuilds, reconcile."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from ..models import Product
from .client import ElasticsearchClient
from .mappings import INDEX_DEFINITION

log = logging.getLogger(__name__)
CHUNK = 500


def alias_name() -> str:
    return settings.ELASTICSEARCH_ALIAS


def definition_hash(definition: dict[str, Any] | None = None) -> str:
    """A short digest of the index's settings and mapping: it names every index built from
    them, so a deploy can tell whether the live index still matches the release's code."""
    text = json.dumps(definition or INDEX_DEFINITION, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def new_index_name(alias: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%f")
    return f"{alias}-{definition_hash()}-{stamp}"


def is_current(client: ElasticsearchClient, alias: str) -> bool:
    """True when the alias points at one index built from this release's definition."""
    targets = client.alias_targets(alias)
    return len(targets) == 1 and targets[0].startswith(f"{alias}-{definition_hash()}-")


def ensure_alias(client: ElasticsearchClient, alias: str) -> str:
    """Make sure the alias exists (an empty index behind it) so indexing never auto-creates a
    concrete index under the alias's name. Returns the index the alias points at."""
    targets = client.alias_targets(alias)
    if targets:
        return targets[0]
    index = new_index_name(alias)
    client.create_index(index, INDEX_DEFINITION)
    client.update_aliases([{"add": {"index": index, "alias": alias}}])
    log.info("created index %s behind alias %s", index, alias)
    return index


def index_product(client: ElasticsearchClient, product: Product) -> bool:
    """True when the product's document is new to the index."""
    return client.index_document(alias_name(), str(product.id), product.search_document())


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for product in Product.objects.order_by("pk").iterator(chunk_size=CHUNK):
        yield str(product.id), product.search_document()


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def rebuild(client: ElasticsearchClient, alias: str, keep_old: bool = False) -> dict[str, Any]:
    """Build a new index from PostgreSQL, then point the alias at it in one atomic step."""
    index = new_index_name(alias)
    client.create_index(index, INDEX_DEFINITION)
    count = 0
    try:
        for chunk in _chunks(_documents(), CHUNK):
            count += client.bulk_index(index, chunk)
        client.refresh(index)
    except Exception:
        client.delete_index(index)  # the alias never saw it
        raise
    old = client.alias_targets(alias)
    if not old and client.index_exists(alias):
        # A concrete index squats the alias's name (auto-created before the alias existed).
        log.warning("deleting concrete index %s so the alias can take its name", alias)
        client.delete_index(alias)
    actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in old]
    actions.append({"add": {"index": index, "alias": alias}})
    client.update_aliases(actions)
    if not keep_old:
        for name in old:
            client.delete_index(name)
    return {"index": index, "alias": alias, "documents": count, "previous": old}


def stale_product_ids(client: ElasticsearchClient, alias: str) -> list[str]:
    """Ids of products whose document is missing or older than the row."""
    stale: list[str] = []
    rows = Product.objects.order_by("pk").values_list("id", "updated_at").iterator(chunk_size=CHUNK)
    for chunk in _chunks(rows, CHUNK):
        docs = client.multi_get(alias, [str(pk) for pk, _ in chunk], ["updated_at"])
        for pk, updated_at in chunk:
            doc = docs.get(str(pk))
            if doc is None or doc.get("updated_at") != updated_at.isoformat():
                stale.append(str(pk))
    return stale
