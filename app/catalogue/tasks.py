"""Celery tasks. Queues: `default` (insert, batch summary), `indexing` (Elasticsearch), `slow`
(image metadata). Routing lives in settings.CELERY_TASK_ROUTES."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pymongo.errors import PyMongoError

from . import autocomplete_cache, imagefetch
from .backoff import backoff_delay
from .documents import get_store
from .models import Event, EventKind, ImageStatus, Product
from .search import indexer
from .search.client import SearchUnavailable, get_client

log = logging.getLogger(__name__)
_aliases_ready: set[str] = set()


def _ensure_alias(client: Any, alias: str) -> None:
    if alias not in _aliases_ready:
        indexer.ensure_alias(client, alias)
        _aliases_ready.add(alias)


@shared_task(
    bind=True,
    name="catalogue.tasks.insert_product",
    autoretry_for=(PyMongoError,),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=50,
)
def insert_product(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Store one accepted submission. The id came with the message: a redelivered or retried
    message finds the row it wrote before (get_or_create), so nothing is ever stored twice."""
    product_id = payload["id"]
    with transaction.atomic():
        product, created = Product.objects.get_or_create(
            id=product_id,
            defaults={
                "title": payload["title"],
                "description": payload.get("description", ""),
                "image_url": payload["image_url"],
                "submitted_at": datetime.fromisoformat(payload["submitted_at"]),
            },
        )
        if created:
            Event.record(product.id, EventKind.CREATED)
        # Enqueued only once the row is committed, and again on a redelivery: indexing is
        # idempotent, and the first delivery may have died between commit and publish.
        index_product.delay_on_commit(str(product.id))
        if product.image_status == ImageStatus.PENDING:
            fetch_image_metadata.delay_on_commit(str(product.id))
    get_store().save_submission(str(product.id), payload)
    return {"id": str(product.id), "created": created, "title": product.title}


@shared_task(name="catalogue.tasks.summarise_batch")
def summarise_batch(results: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    """Second round of a batch chord: fed by every insert's result."""
    summary = {
        "batch_id": batch_id,
        "status": "done",
        "products": len(results),
        "created": sum(1 for r in results if r.get("created")),
        "already_present": sum(1 for r in results if not r.get("created")),
        "ids": [r["id"] for r in results],
    }
    get_store().save_batch(batch_id, summary)
    return summary


@shared_task(
    bind=True,
    name="catalogue.tasks.index_product",
    autoretry_for=(SearchUnavailable,),
    retry_backoff=2,
    retry_backoff_max=settings.INDEXING_BACKOFF_CAP,
    retry_jitter=True,
    max_retries=None,  # Elasticsearch down never loses a product: retry until it is back.
)
def index_product(self: Any, product_id: str) -> dict[str, Any]:
    client = get_client()
    alias = indexer.alias_name()
    _ensure_alias(client, alias)
    product = Product.objects.filter(id=product_id).first()
    if product is None:
        client.delete_document(alias, product_id)
        autocomplete_cache.bump()
        return {"id": product_id, "indexed": False}
    created = indexer.index_product(client, product)
    # A document new to the index changes what a prefix finds, so cached answers go; one
    # rewritten in place (a view, an image result) changes only popularity, which may wait for
    # the cache's TTL. A retry or redelivery may follow an attempt that created the document
    # but never heard back, so it counts as new.
    if created or not _first_delivery(self.request):
        autocomplete_cache.bump()
    Event.record(product.id, EventKind.INDEXED, alias=alias)
    return {"id": product_id, "indexed": True}


def _first_delivery(request: Any) -> bool:
    return not request.retries and not (request.delivery_info or {}).get("redelivered")


@shared_task(
    bind=True,
    name="catalogue.tasks.reconcile_index",
    autoretry_for=(SearchUnavailable,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=5,
)
def reconcile_index(self: Any) -> dict[str, Any]:
    """Beat task: re-index every product whose document is missing or older than its row."""
    client = get_client()
    alias = indexer.alias_name()
    _ensure_alias(client, alias)
    stale = indexer.stale_product_ids(client, alias)
    for product_id in stale:
        index_product.delay(product_id)
    if stale:
        log.info("reconcile: %d products re-enqueued for indexing", len(stale))
    return {"stale": len(stale)}


@shared_task(
    bind=True,
    name="catalogue.tasks.fetch_image_metadata",
    soft_time_limit=30,
    time_limit=45,
)
def fetch_image_metadata(self: Any, product_id: str) -> dict[str, Any]:
    """Image metadata, on the `slow` queue. Transient failures retry with capped exponential
    backoff and jitter, at most IMAGE_FETCH_MAX_RETRIES times; the last outcome is kept either
    way and the product itself is never failed."""
    product = Product.objects.filter(id=product_id).first()
    if product is None:
        return {"id": product_id, "outcome": "missing"}
    attempt = self.request.retries or 0
    try:
        result = imagefetch.fetch(
            product.image_url,
            timeout=settings.IMAGE_FETCH_TIMEOUT,
            allow_private=settings.IMAGE_FETCH_ALLOW_PRIVATE,
        )
    except SoftTimeLimitExceeded:
        result = imagefetch.FetchResult("unreachable", True, product.image_url, error="time limit")
    try:
        get_store().save_image_fetch(product_id, attempt, result.as_dict())
    except PyMongoError:
        log.warning("image fetch result for %s not kept in MongoDB", product_id, exc_info=True)
    max_retries = settings.IMAGE_FETCH_MAX_RETRIES
    if result.retryable and attempt < max_retries:
        delay = backoff_delay(
            attempt, settings.IMAGE_FETCH_BACKOFF_BASE, settings.IMAGE_FETCH_BACKOFF_CAP
        )
        raise self.retry(countdown=delay, max_retries=max_retries)
    record_image_result(product_id, result)
    return {"id": product_id, "attempts": attempt + 1, **result.as_dict()}


def record_image_result(product_id: str, result: imagefetch.FetchResult) -> None:
    with transaction.atomic():
        product = Product.objects.select_for_update().get(id=product_id)
        product.image_status = ImageStatus.OK if result.outcome == "ok" else ImageStatus.FAILED
        product.image_outcome = result.outcome
        product.image_content_type = result.content_type
        product.image_size = result.content_length
        product.image_checked_at = timezone.now()
        product.save()
        index_product.delay_on_commit(product_id)
