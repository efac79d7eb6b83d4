"""HTTP endpoints: the page, the JSON API and the health probes."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from functools import partial
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, InterfaceError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import (
    require_http_methods,
    require_POST,
    require_safe,
)

from . import autocomplete_cache, clients, health, metrics, tasks
from .auth import token_required
from .documents import get_store
from .models import Product, Submission
from .search import queries
from .search.client import SearchUnavailable, get_client
from .search.indexer import alias_name
from .validation import ProductForm, validate_product

log = logging.getLogger(__name__)
QUERY_MAX_LENGTH = 100
# What the database raises when it is down, restarting or drops the connection mid-request.
DATABASE_FAILURE = (DatabaseError, InterfaceError)


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _new_submission(clean: dict[str, str]) -> dict[str, Any]:
    """The message for insert_product: the id is chosen here, once, at request time."""
    return {
        "id": str(uuid.uuid4()),
        "title": clean["title"],
        "description": clean.get("description", ""),
        "image_url": clean["image_url"],
        "submitted_at": timezone.now().isoformat(),
    }


def _record(submissions: list[dict[str, Any]], batch_id: str | None = None) -> None:
    """The outbox: the submissions become rows in one transaction, and their messages are
    published only once it has committed. Raises a DATABASE_FAILURE when they cannot be recorded;
    then nothing was stored and nothing is published."""
    with transaction.atomic():
        Submission.objects.bulk_create(Submission.accepted(s, batch_id) for s in submissions)
        transaction.on_commit(partial(_publish, submissions, batch_id))
    metrics.accepted(len(submissions), batch=batch_id is not None)


def _publish(submissions: list[dict[str, Any]], batch_id: str | None) -> None:
    """Runs after the commit. A failed publish is what the outbox is for: the submissions are
    recorded, so the request is still accepted and the re-drive sends them later."""
    try:
        if batch_id is None:
            for submission in submissions:
                tasks.insert_product.delay(submission)
        else:
            tasks.insert_batch.delay(submissions, batch_id)
    except Exception:
        log.warning(
            "publishing %d recorded submissions failed; the outbox re-drives them",
            len(submissions),
            exc_info=True,
        )


def _cannot_accept(response: HttpResponse) -> HttpResponse:
    response.status_code = 503
    response["Retry-After"] = str(settings.CATALOGUE_RETRY_AFTER)
    return response


def _accepted(submission: dict[str, Any]) -> dict[str, str]:
    return {
        "id": submission["id"],
        "status": "accepted",
        "status_url": reverse("product-status", args=[submission["id"]]),
        "history_url": reverse("product-history", args=[submission["id"]]),
    }


def _json_body(request: HttpRequest) -> tuple[Any, JsonResponse | None]:
    try:
        return json.loads(request.body or b"null"), None
    except (ValueError, UnicodeDecodeError):
        return None, JsonResponse({"errors": {"__all__": ["Invalid JSON."]}}, status=400)


# -- the page ------------------------------------------------------------------------------------
@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """The page. The form is for signed-in users only (accounts the operator makes): an
    anonymous visitor gets a sign-in link instead, and an anonymous POST is refused with 403
    before anything is read from it, as the API refuses a request without its token. The form
    is validated by the API's own rules, recorded by the same outbox, and its image URL goes
    through the same fetcher (addresses checked at every hop); nginx limits its POSTs per
    client like every other write."""
    status = 200
    accepted = None
    products: Any = Product.objects.all()[:50]
    signed_in = request.user.is_authenticated
    form = ProductForm() if signed_in else None
    if request.method == "POST":
        if not signed_in:
            status = 403
        else:
            form = ProductForm(request.POST)
            if form.is_valid():
                submission = _new_submission(form.cleaned_data)
                try:
                    _record([submission])
                except DATABASE_FAILURE:
                    log.exception("could not record a submission")
                    form.add_error(
                        None, "Products cannot be added right now; please try again soon."
                    )
                    status = 503
                    products = []  # the database is what failed
                else:
                    log.info("product %s submitted by %s", submission["id"], request.user)
                    target = f"{reverse('index')}?accepted={submission['id']}"
                    return redirect(target, permanent=False)
            else:
                status = 400
    elif signed_in:
        accepted = request.GET.get("accepted")
    q = request.GET.get("q", "").strip()[:QUERY_MAX_LENGTH]
    search_answer, search_error = None, ""
    if q:
        try:
            search_answer = queries.search(get_client(), alias_name(), q)
        except SearchUnavailable:
            search_error = "Search is unavailable right now."
    context = {
        "form": form,
        "refused": status == 403,
        "products": products,
        "accepted": accepted,
        "q": q,
        "search": search_answer,
        "search_error": search_error,
    }
    response = render(request, "catalogue/index.html", context, status=status)
    return _cannot_accept(response) if status == 503 else response


# -- products API --------------------------------------------------------------------------------
@csrf_exempt  # a JSON API: a bearer token, no cookies
@require_POST
@token_required
def api_products(request: HttpRequest) -> JsonResponse:
    data, bad = _json_body(request)
    if bad:
        return bad
    clean, errors = validate_product(data)
    if errors:
        return JsonResponse({"errors": errors}, status=400)
    submission = _new_submission(clean)
    try:
        _record([submission])
    except DATABASE_FAILURE:
        log.exception("could not record a submission")
        return _cannot_accept(_error(503, "cannot accept products right now"))
    response = JsonResponse(_accepted(submission), status=202)
    response["Location"] = reverse("product-status", args=[submission["id"]])
    return response


@csrf_exempt
@require_POST
@token_required
def api_batch(request: HttpRequest) -> JsonResponse:
    """All the products in one insert_batch message: one bulk insert, one bulk indexing and
    one insert_many of their history, then the batch's summary."""
    data, bad = _json_body(request)
    if bad:
        return bad
    items = data.get("products") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        return JsonResponse({"errors": {"products": ["A non-empty list is required."]}}, status=400)
    if len(items) > settings.CATALOGUE_BATCH_MAX:
        message = f"At most {settings.CATALOGUE_BATCH_MAX} products per batch."
        return JsonResponse({"errors": {"products": [message]}}, status=400)
    cleaned, errors = [], {}
    for position, item in enumerate(items):
        clean, item_errors = validate_product(item)
        if item_errors:
            errors[str(position)] = item_errors
        cleaned.append(clean)
    if errors:
        return JsonResponse({"errors": {"products": errors}}, status=400)
    batch_id = str(uuid.uuid4())
    submissions = [_new_submission(clean) for clean in cleaned]
    try:
        _record(submissions, batch_id)
    except DATABASE_FAILURE:
        log.exception("could not record a batch")
        return _cannot_accept(_error(503, "cannot accept products right now"))
    return JsonResponse(
        {
            "batch_id": batch_id,
            "status_url": reverse("batch-status", args=[batch_id]),
            "products": [_accepted(s) for s in submissions],
        },
        status=202,
    )


@require_safe
def api_batch_status(request: HttpRequest, batch_id: uuid.UUID) -> JsonResponse:
    summary = get_store().get_batch(str(batch_id))
    if summary is None:
        return JsonResponse({"batch_id": str(batch_id), "status": "pending"}, status=202)
    return JsonResponse(summary)


def _count_view(request: HttpRequest, product_id: uuid.UUID) -> bool:
    """One view per client, product and CATALOGUE_VIEW_WINDOW, counted by a task: the first
    beacon in the window claims a key in the cache (add is atomic), later ones change nothing.
    The client is its IPv4 address or its IPv6 /64 (catalogue.clients), so rotating addresses
    inside one /64 counts once."""
    window = settings.CATALOGUE_VIEW_WINDOW
    seen = hashlib.sha256(f"{product_id}|{clients.key_of(request)}".encode()).hexdigest()[:32]
    if not cache.add(f"viewed:{int(time.time() // window)}:{seen}", 1, timeout=window):
        return False
    try:
        tasks.count_view.delay(str(product_id))
    except Exception:  # a beacon never fails for want of a counted view
        log.warning("a view of %s was not counted", product_id, exc_info=True)
        return False
    return True


@require_safe
def api_product(request: HttpRequest, product_id: uuid.UUID) -> JsonResponse:
    """The product once stored; 202 pending while the insert is queued. A read writes nothing
    and queues nothing, so a GET or a HEAD can be repeated at will: views are counted only by
    the POST beacon below."""
    product = Product.objects.filter(id=product_id).first()
    if product is None:
        return JsonResponse({"id": str(product_id), "status": "pending"}, status=202)
    return JsonResponse(
        {
            "id": str(product.id),
            "status": "stored",
            "title": product.title,
            "description": product.description,
            "image_url": product.image_url,
            "popularity": product.popularity,
            "created_at": product.created_at.isoformat(),
            "image": {
                "status": product.image_status,
                "outcome": product.image_outcome,
                "content_type": product.image_content_type,
                "size": product.image_size,
            },
        }
    )


@csrf_exempt  # no cookie or token grants anything here: it is anonymous by design
@require_POST
def api_product_view(request: HttpRequest, product_id: uuid.UUID) -> JsonResponse:
    """The view beacon: a client that shows a product says so with a POST. Popularity rises by
    at most one per product, client (IPv4 address or IPv6 /64) and CATALOGUE_VIEW_WINDOW, and
    nginx limits POSTs per client, so one reader cannot inflate it. 404 for a product that is
    not stored (nothing is counted); else 202 with whether this beacon was counted."""
    if not Product.objects.filter(id=product_id).exists():
        return _error(404, "no such product")
    return JsonResponse(
        {"id": str(product_id), "counted": _count_view(request, product_id)}, status=202
    )


@require_safe
def api_product_history(request: HttpRequest, product_id: uuid.UUID) -> JsonResponse:
    documents = get_store().history(str(product_id))
    if not documents and not Product.objects.filter(id=product_id).exists():
        return _error(404, "no such product")
    return JsonResponse({"id": str(product_id), "history": documents})


# -- search API ----------------------------------------------------------------------------------
def _query(request: HttpRequest) -> str:
    return request.GET.get("q", "").strip()[:QUERY_MAX_LENGTH]


@require_safe
def api_autocomplete(request: HttpRequest) -> JsonResponse:
    q = _query(request)
    if not q:
        return JsonResponse({"query": q, "results": [], "cached": False})
    generation = autocomplete_cache.generation()
    key = autocomplete_cache.key(q, generation)
    results = cache.get(key)
    cached = results is not None
    if not cached:
        try:
            results = queries.autocomplete(get_client(), alias_name(), q)
        except SearchUnavailable:
            return _error(503, "search unavailable")
        if autocomplete_cache.settled(generation):
            cache.set(key, results, settings.CATALOGUE_AUTOCOMPLETE_TTL)
    return JsonResponse({"query": q, "results": results, "cached": cached})


@require_safe
def api_search(request: HttpRequest) -> JsonResponse:
    try:
        return JsonResponse(queries.search(get_client(), alias_name(), _query(request)))
    except SearchUnavailable:
        return _error(503, "search unavailable")


@require_safe
def api_stats(request: HttpRequest) -> JsonResponse:
    try:
        return JsonResponse(queries.stats(get_client(), alias_name()))
    except SearchUnavailable:
        return _error(503, "search unavailable")


# -- probes --------------------------------------------------------------------------------------
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    ok, results = health.readiness()
    return JsonResponse(
        {"status": "ok" if ok else "fail", "checks": results}, status=200 if ok else 503
    )
