"""Celery tasks. Queues: `default` (insert, batch summary, the outbox's re-drive and pruning),
`indexing` (Elasticsearch), `slow` (image metadata). Routing lives in settings.CELERY_TASK_ROUTES.

Every task may run twice for one product (a redelivery, a retry, a re-drive by the outbox) and
stores, indexes and records it once: the product id comes with the message and every write is
keyed by it."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone
from pymongo.errors import PyMongoError

from . import autocomplete_cache, imagefetch
from .backoff import backoff_delay
from .documents import get_store
from .models import Event, EventKind, ImageStatus, Product, QueueProbe, Submission
from .search import indexer
from .search.client import SearchUnavailable, get_client

log = logging.getLogger(__name__)
_aliases_ready: set[str] = set()
# PostgreSQL restarting: retry soon rather than wait for the outbox's deadline.
DATABASE_OUTAGE = (OperationalError, InterfaceError)
# The queues the outbox's messages go to: inserts to `default`, indexing to `indexing`.
OUTBOX_QUEUES = ("default", "indexing")
PROBES_KEPT = timedelta(hours=1)
# Seconds fetch_images waits for its attempts: its soft time limit less a margin to send on.
IMAGE_FETCH_BATCH_BUDGET = 25


def _ensure_alias(client: Any, alias: str) -> None:
    if alias not in _aliases_ready:
        indexer.ensure_alias(client, alias)
        _aliases_ready.add(alias)


# How one product's insert and a batch's retry through a database or MongoDB outage.
INSERT_RETRIES: dict[str, Any] = {
    "autoretry_for": (PyMongoError, *DATABASE_OUTAGE),
    "retry_backoff": 2,
    "retry_backoff_max": settings.INSERT_BACKOFF_CAP,
    "retry_jitter": True,
    "max_retries": 50,
}


@shared_task(
    bind=True,
    name="catalogue.tasks.insert_product",
    **INSERT_RETRIES,
)
def insert_product(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Store one accepted submission, and with it the single submissions waiting behind it
    (group commit): under load they are stored, indexed and fetched as a batch, and their own
    messages, when they come, find the work done. Idle, the group is the one product.

    The id came with the message: a redelivered, retried or re-driven message finds the row
    it wrote before, so nothing is ever stored twice; the history document's id is derived
    from it too."""
    product_id = payload["id"]
    # A group is never larger than a batch the API accepts: fetch_images' budget holds.
    limit = settings.CATALOGUE_BATCH_MAX - 1
    taken = Submission.take_singles(product_id, limit, _first_delivery(self.request))
    if taken is None:
        # Stored with its history, or being worked by the insert that took it: a copy queues
        # nothing, so a backlog is not multiplied by indexings and image fetches.
        return {"id": product_id, "created": False}
    try:
        created = _store_submissions([payload, *taken])
    except Exception:
        if taken:
            _release_taken([p["id"] for p in taken])
        raise
    return {"id": product_id, "created": product_id in created, "taken": len(taken)}


def _release_taken(product_ids: list[str]) -> None:
    try:
        Submission.release_taken(product_ids)
    except DATABASE_OUTAGE:
        # Left claimed: the re-drive sends them again once the claim's lease runs out.
        log.warning("could not hand back %d submissions taken along", len(product_ids))


@shared_task(
    bind=True,
    name="catalogue.tasks.insert_batch",
    **INSERT_RETRIES,
)
def insert_batch(self: Any, payloads: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    """Store a batch's submissions together (see _store_submissions), then the batch's
    summary. As with insert_product, running it twice stores, records and summarises each
    product once."""
    Submission.claim([payload["id"] for payload in payloads])
    created = _store_submissions(payloads)
    results = [{"id": p["id"], "created": p["id"] in created} for p in payloads]
    # A copy of the batch run after the summary was written would count every product as
    # already present: the first summary stands.
    if Submission.objects.filter(batch_id=batch_id, summarised_at__isnull=True).exists():
        summarise_batch(results, batch_id)
    return {"batch_id": batch_id, "products": len(payloads), "created": len(created)}


def _store_submissions(payloads: list[dict[str, Any]]) -> set[str]:
    """Store claimed submissions together: one INSERT of the products and one of their
    `created` events, one insert_many of their history documents, one message to index them
    all and one to fetch their images. Returns the ids of the products it created.

    The submissions' outbox rows are locked while the products are looked up and inserted,
    so a second run (a redelivery, a re-drive, a batch after a member re-driven alone) waits
    and finds them stored: a submission already stored with its history costs at most its
    indexing, and one without history has it written again (MongoDB keeps the first)."""
    ids = [payload["id"] for payload in payloads]
    with transaction.atomic():
        # In one order, so two runs over the same rows queue behind each other instead of
        # deadlocking; the second finds the products stored.
        rows = Submission.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        steps = {
            str(pk): (stored and history, indexed)
            for pk, stored, history, indexed in rows.values_list(
                "pk", "stored_at", "history_at", "indexed_at"
            )
        }
        existing = {
            str(pk): image_status
            for pk, image_status in Product.objects.filter(pk__in=ids).values_list(
                "pk", "image_status"
            )
        }
        new = [payload for payload in payloads if payload["id"] not in existing]
        Product.objects.bulk_create(
            Product(
                id=payload["id"],
                title=payload["title"],
                description=payload.get("description", ""),
                image_url=payload["image_url"],
                submitted_at=datetime.fromisoformat(payload["submitted_at"]),
            )
            for payload in new
        )
        Event.objects.bulk_create(
            Event(product_id=payload["id"], kind=EventKind.CREATED) for payload in new
        )
        Submission.mark_all(ids, Submission.STORED)
        open_ = [p for p in payloads if not steps.get(p["id"], (False, False))[0]]
        to_index = [pk for pk in ids if not steps.get(pk, (False, False))[1]]
        images = [
            [p["id"], p["image_url"]]
            for p in open_
            if existing.get(p["id"], ImageStatus.PENDING) == ImageStatus.PENDING
        ]
        if to_index:
            index_products.delay_on_commit(to_index)
            Submission.forwarded(to_index)
        if images:
            fetch_images.delay_on_commit(images)
    get_store().save_submissions({payload["id"]: payload for payload in open_})
    Submission.mark_all([payload["id"] for payload in open_], Submission.HISTORY)
    return {payload["id"] for payload in new}


@shared_task(name="catalogue.tasks.summarise_batch")
def summarise_batch(results: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    """A batch's summary, from its inserts' results: written by insert_batch, and sent by
    redrive_submissions for a batch whose members were re-driven one by one (the document is
    replaced, so both may run)."""
    summary = {
        "batch_id": batch_id,
        "status": "done",
        "products": len(results),
        "created": sum(1 for r in results if r.get("created")),
        "already_present": sum(1 for r in results if not r.get("created")),
        "ids": [r["id"] for r in results],
    }
    get_store().save_batch(batch_id, summary)
    Submission.objects.filter(batch_id=batch_id, summarised_at__isnull=True).update(
        summarised_at=timezone.now()
    )
    return summary


@shared_task(
    bind=True,
    name="catalogue.tasks.index_product",
    autoretry_for=(SearchUnavailable, *DATABASE_OUTAGE),
    retry_backoff=2,
    retry_backoff_max=settings.INDEXING_BACKOFF_CAP,
    retry_jitter=True,
    max_retries=None,  # Elasticsearch down never loses a product: retry until it is back.
)
def index_product(self: Any, product_id: str) -> dict[str, Any]:
    Submission.claim([product_id])
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
    Submission.mark(product.id, Submission.INDEXED)
    return {"id": product_id, "indexed": True}


@shared_task(
    bind=True,
    name="catalogue.tasks.index_products",
    autoretry_for=(SearchUnavailable, *DATABASE_OUTAGE),
    retry_backoff=2,
    retry_backoff_max=settings.INDEXING_BACKOFF_CAP,
    retry_jitter=True,
    max_retries=None,  # as index_product: never dropped while Elasticsearch is down
)
def index_products(self: Any, product_ids: list[str]) -> dict[str, Any]:
    """index_product for a batch: one query for the rows, one _bulk request for their
    documents, one INSERT of their `indexed` events, one update of their outbox rows."""
    Submission.claim(product_ids)
    client = get_client()
    alias = indexer.alias_name()
    _ensure_alias(client, alias)
    products = list(Product.objects.filter(id__in=product_ids))
    created = client.index_documents(alias, [(str(p.id), p.search_document()) for p in products])
    found = {str(product.id) for product in products}
    missing = [pk for pk in product_ids if pk not in found]
    for product_id in missing:
        client.delete_document(alias, product_id)
    # As in index_product: new documents retire cached autocomplete answers.
    if created or missing or not _first_delivery(self.request):
        autocomplete_cache.bump()
    Event.objects.bulk_create(
        Event(product_id=product.id, kind=EventKind.INDEXED, payload={"alias": alias})
        for product in products
    )
    Submission.mark_all([product.id for product in products], Submission.INDEXED)
    return {"indexed": len(products), "created": created, "missing": len(missing)}


def _first_delivery(request: Any) -> bool:
    return not request.retries and not (request.delivery_info or {}).get("redelivered")


@shared_task(
    bind=True,
    name="catalogue.tasks.reconcile_index",
    autoretry_for=(SearchUnavailable,),
    retry_backoff=5,
    retry_backoff_max=settings.RECONCILE_BACKOFF_CAP,
    max_retries=5,
)
def reconcile_index(self: Any) -> dict[str, Any]:
    """Beat task: re-index every product whose document is missing or older than its row."""
    client = get_client()
    alias = indexer.alias_name()
    _ensure_alias(client, alias)
    # A product whose submission is not done yet is the outbox's: its indexing is queued or will
    # be re-driven. Enqueueing it here too only adds duplicates to a backlog after an outage.
    pending = {str(pk) for pk in Submission.objects.pending().values_list("pk", flat=True)}
    stale = [pk for pk in indexer.stale_product_ids(client, alias) if pk not in pending]
    for product_id in stale:
        index_product.delay(product_id)
    if stale:
        log.info("reconcile: %d products re-enqueued for indexing", len(stale))
    return {"stale": len(stale)}


@shared_task(name="catalogue.tasks.redrive_submissions")
def redrive_submissions() -> dict[str, int]:
    """Beat task of the outbox: send insert_product again for every submission whose work was
    lost (see Submission.to_send_again), or only index_product when the product is stored and
    has its history, and the summary of every batch that is done but has none. Then a probe
    to each queue, which tells a later run what has left the queues.

    A submission whose message is waiting in a queue, behind a backlog of any length, is not
    sent again: that only doubled the backlog. Each row is marked as sent again only after its
    publish returned; a publish that fails fails this run, and the next run picks up what is
    still lost."""
    now = timezone.now()
    drained_before = QueueProbe.drained_before(OUTBOX_QUEUES, now)
    lost = Submission.objects.to_send_again(now, drained_before)
    redriven = 0
    for submission in lost[: settings.CATALOGUE_REDRIVE_BATCH]:
        if submission.stored_at and submission.history_at:
            # Only the indexing is missing: sending the whole insert again would also queue
            # another image fetch, and after an outage the re-drive must not multiply the work.
            index_product.delay(str(submission.pk))
        else:
            insert_product.delay(submission.payload)
        Submission.sent_again(submission.pk, submission.sends, now)
        redriven += 1
    done_before = now - timedelta(seconds=settings.CATALOGUE_REDRIVE_AFTER)
    batches = list(
        Submission.objects.batches_to_summarise(done_before)[: settings.CATALOGUE_REDRIVE_BATCH]
    )
    for batch_id in batches:
        members = Submission.objects.filter(batch_id=batch_id, summarised_at__isnull=True)
        ids = members.order_by("accepted_at", "pk").values_list("pk", flat=True)
        # Product ids are new for every submission: each stored product was created by it.
        summarise_batch.delay([{"id": str(pk), "created": True} for pk in ids], str(batch_id))
    QueueProbe.objects.filter(ran_at__lt=now - PROBES_KEPT).delete()
    for queue in OUTBOX_QUEUES:
        probe_queue.apply_async((queue, now.isoformat()), queue=queue, routing_key=queue)
    if redriven or batches:
        log.warning("outbox: sent again %d submissions, %d batch summaries", redriven, len(batches))
    return {"redriven": redriven, "batches": len(batches)}


@shared_task(name="catalogue.tasks.probe_queue", ignore_result=True)
def probe_queue(queue: str, sent_at: str) -> None:
    """The re-drive's probe, consumed: every message published to `queue` before `sent_at`
    has been delivered (see QueueProbe)."""
    QueueProbe.objects.create(queue=queue, sent_at=datetime.fromisoformat(sent_at))


@shared_task(
    name="catalogue.tasks.count_view",
    ignore_result=True,
    autoretry_for=DATABASE_OUTAGE,
    retry_backoff=2,
    retry_jitter=True,
    max_retries=5,
)
def count_view(product_id: str) -> None:
    """One view (already de-duplicated per client and window by the read). The row's new
    updated_at makes the next reconcile carry the popularity to the index: no indexing task
    per view."""
    with transaction.atomic():
        counted = Product.objects.filter(id=product_id).update(
            popularity=F("popularity") + 1, updated_at=timezone.now()
        )
        if counted:
            Event.record(product_id, EventKind.VIEWED)


@shared_task(name="catalogue.tasks.clear_sessions", ignore_result=True)
def clear_sessions() -> None:
    """Beat task: delete the page's expired sign-in sessions (Django's clearsessions)."""
    SessionStore.clear_expired()


@shared_task(name="catalogue.tasks.prune_submissions")
def prune_submissions() -> dict[str, int]:
    """Beat task: delete the outbox rows done more than CATALOGUE_SUBMISSION_RETENTION_DAYS ago."""
    cutoff = timezone.now() - timedelta(days=settings.CATALOGUE_SUBMISSION_RETENTION_DAYS)
    deleted, _ = Submission.objects.prunable(cutoff).delete()
    return {"deleted": deleted}


@shared_task(
    bind=True,
    name="catalogue.tasks.fetch_image_metadata",
    soft_time_limit=30,
    time_limit=45,
    ignore_result=True,
)
def fetch_image_metadata(self: Any, product_id: str, image_url: str | None = None) -> dict:
    """Image metadata, on the `slow` queue. Transient failures retry with capped exponential
    backoff and jitter, at most IMAGE_FETCH_MAX_RETRIES times.

    The fetch reaches out to addresses a client chose, so it touches no data service: each
    attempt's outcome goes to `record_image_attempt` on the default queue, and the worker that
    consumes `slow` can be denied the data tier (the celery role's ip_address_deny). A message
    without the URL (queued by an older release) looks it up."""
    if image_url is None:
        image_url = Product.objects.filter(id=product_id).values_list("image_url", flat=True)
        image_url = image_url.first()
        if image_url is None:
            return {"id": product_id, "outcome": "missing"}
    attempt = self.request.retries or 0
    try:
        result = _fetch_image(image_url)
    except SoftTimeLimitExceeded:
        result = imagefetch.FetchResult("unreachable", True, image_url, error="time limit")
    final = _image_attempt_is_final(product_id, attempt, result)
    record_image_attempt.delay(product_id, attempt, result.public(), final)
    if not final:
        raise self.retry(countdown=_image_retry_delay(attempt), max_retries=_image_max_retries())
    return {"id": product_id, "attempts": attempt + 1, **result.public()}


@shared_task(
    name="catalogue.tasks.fetch_images",
    soft_time_limit=30,
    time_limit=45,
    ignore_result=True,
)
def fetch_images(items: list[list[str]]) -> dict[str, int]:
    """The first image-metadata attempt of a batch's products ([product id, URL] each), at
    most IMAGE_FETCH_CONCURRENCY at once, on the `slow` queue like fetch_image_metadata and
    touching no data service either: the outcomes leave as one record_image_attempts message.
    A product whose attempt may succeed later goes on as its own fetch_image_metadata, at
    attempt 1 after its backoff. Attempts still running when the budget (below the soft time
    limit) is spent count as timed out, and are retried so."""
    pool = ThreadPoolExecutor(max_workers=max(1, settings.IMAGE_FETCH_CONCURRENCY))
    futures = [pool.submit(_fetch_image, url) for _, url in items]
    finished, _ = wait(futures, timeout=IMAGE_FETCH_BATCH_BUDGET)
    # Threads still fetching end at their own timeouts; nothing waits for them.
    pool.shutdown(wait=False, cancel_futures=True)
    attempts, retried = [], 0
    for (product_id, url), future in zip(items, futures, strict=True):
        if future in finished and future.exception() is None:
            result = future.result()
        else:
            error = "time limit" if future not in finished else repr(future.exception())
            result = imagefetch.FetchResult("unreachable", True, url, error=error)
        final = _image_attempt_is_final(product_id, 0, result)
        attempts.append([product_id, 0, result.public(), final])
        if not final:
            fetch_image_metadata.apply_async(
                (product_id, url), countdown=_image_retry_delay(0), retries=1
            )
            retried += 1
    record_image_attempts.delay(attempts)
    return {"fetched": len(items), "retried": retried}


def _fetch_image(image_url: str) -> imagefetch.FetchResult:
    return imagefetch.fetch(
        image_url,
        timeout=settings.IMAGE_FETCH_TIMEOUT,
        allow_private=settings.IMAGE_FETCH_ALLOW_PRIVATE,
        deny=imagefetch.parse_networks(settings.IMAGE_FETCH_DENY),
    )


def _image_max_retries() -> int:
    return settings.IMAGE_FETCH_MAX_RETRIES


def _image_attempt_is_final(product_id: str, attempt: int, result: Any) -> bool:
    if result.error:
        log.info("image fetch of %s: %s (%s)", product_id, result.outcome, result.error)
    return not (result.retryable and attempt < _image_max_retries())


def _image_retry_delay(attempt: int) -> float:
    return backoff_delay(
        attempt, settings.IMAGE_FETCH_BACKOFF_BASE, settings.IMAGE_FETCH_BACKOFF_CAP
    )


@shared_task(
    name="catalogue.tasks.record_image_attempt",
    autoretry_for=(PyMongoError, *DATABASE_OUTAGE),
    retry_backoff=2,
    retry_backoff_max=settings.INSERT_BACKOFF_CAP,
    retry_jitter=True,
    max_retries=20,
)
def record_image_attempt(product_id: str, attempt: int, shown: dict[str, Any], final: bool) -> None:
    """Keep one attempt's outcome (as clients may see it) in the history; the last one also on
    the product, which is indexed again."""
    get_store().save_image_fetch(product_id, attempt, shown)
    if final:
        record_image_result(product_id, shown)


@shared_task(
    name="catalogue.tasks.record_image_attempts",
    autoretry_for=(PyMongoError, *DATABASE_OUTAGE),
    retry_backoff=2,
    retry_backoff_max=settings.INSERT_BACKOFF_CAP,
    retry_jitter=True,
    max_retries=20,
)
def record_image_attempts(attempts: list[list[Any]]) -> None:
    """record_image_attempt for a batch's attempts ([product id, attempt, shown, final] each):
    the final outcomes are written in one transaction and indexed by one message."""
    store = get_store()
    for product_id, attempt, shown, _ in attempts:
        store.save_image_fetch(product_id, attempt, shown)
    final = {product_id: shown for product_id, _, shown, is_final in attempts if is_final}
    if not final:
        return
    now = timezone.now()
    with transaction.atomic():
        products = list(Product.objects.select_for_update().filter(id__in=final).order_by("pk"))
        for product in products:
            _keep_image_result(product, final[str(product.id)], now)
        # bulk_update skips auto_now: updated_at is among the fields, set above.
        Product.objects.bulk_update(products, IMAGE_FIELDS)
        if products:
            index_products.delay_on_commit([str(product.id) for product in products])


IMAGE_FIELDS = (
    "image_status",
    "image_outcome",
    "image_content_type",
    "image_size",
    "image_checked_at",
    "updated_at",
)


def _keep_image_result(product: Product, shown: dict[str, Any], now: datetime) -> None:
    product.image_status = ImageStatus.OK if shown["outcome"] == "ok" else ImageStatus.FAILED
    product.image_outcome = shown["outcome"]
    product.image_content_type = shown.get("content_type") or ""
    product.image_size = shown.get("content_length")
    product.image_checked_at = now
    product.updated_at = now


def record_image_result(product_id: str, shown: dict[str, Any]) -> None:
    with transaction.atomic():
        product = Product.objects.select_for_update().filter(id=product_id).first()
        if product is None:
            return
        _keep_image_result(product, shown, timezone.now())
        product.save()
        index_product.delay_on_commit(product_id)
