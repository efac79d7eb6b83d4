"""The app's Prometheus metrics, served at /metrics to the monitor hosts.

- Requests: django-prometheus's middleware counts every response by status, view and method and
  times it per view (settings.MIDDLEWARE). Under gunicorn every worker is a process of its own:
  with PROMETHEUS_MULTIPROC_DIR set (the gunicorn role's unit sets it), each writes its samples
  to a file there and a scrape adds them up, whichever worker answers it.
- Products accepted: a counter per way in (one product, a batch), raised once the submissions'
  rows have committed, so with the outbox's pending figure it gives the products done per
  second (accepted minus the growth of the pending ones).
- The outbox: read from the database at scrape time, so every web host reports the same figures
  (the alert rules take their maximum).

Only a request that carries the bearer token whose SHA-256 digest is
settings.CATALOGUE_METRICS_TOKEN_HASH is answered; without a digest configured the endpoint
does not exist (404). nginx never proxies it: the monitor hosts reach gunicorn directly, by its
address. So the endpoint is a middleware that answers before Django checks the Host header
against ALLOWED_HOSTS (Prometheus sends the address it scrapes as Host, which the site's names
need not include); it builds no URL from the Host header, and the token is what admits a
client.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterator

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError
from django.db.models import Count, Min, Q
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.utils import timezone
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from .auth import DIGEST
from .models import Submission

log = logging.getLogger(__name__)

ACCEPTED = Counter(
    "catalogue_products_accepted",
    "Products accepted: recorded in the outbox and answered 202 (via: single or batch).",
    ["via"],
)


def accepted(count: int, batch: bool) -> None:
    ACCEPTED.labels(via="batch" if batch else "single").inc(count)


class OutboxCollector:
    """The submissions the outbox still owes a step, as the re-drive sees them, read with one
    query on the partial indexes of the rows not done."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        up = GaugeMetricFamily(
            "catalogue_outbox_up", "1 when the outbox figures could be read from the database."
        )
        try:
            row = Submission.objects.pending().aggregate(
                pending=Count("pk"),
                overdue=Count("pk", filter=Q(redrive_at__lt=now)),
                oldest_accepted=Min("accepted_at"),
                oldest_deadline=Min("redrive_at"),
            )
        except (DatabaseError, InterfaceError):
            log.warning("metrics: the outbox could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "catalogue_outbox_pending",
            "Accepted submissions not done yet (stored, history written and indexed).",
            value=row["pending"],
        )
        yield GaugeMetricFamily(
            "catalogue_outbox_overdue",
            "Pending submissions past their re-drive deadline (redrive_at).",
            value=row["overdue"],
        )
        yield GaugeMetricFamily(
            "catalogue_outbox_oldest_pending_age_seconds",
            "Seconds since the oldest pending submission was accepted; 0 when none is pending.",
            value=_seconds_since(row["oldest_accepted"], now),
        )
        yield GaugeMetricFamily(
            "catalogue_outbox_oldest_overdue_seconds",
            "Seconds the most overdue pending submission is past its re-drive deadline; 0 when"
            " none is.",
            value=_seconds_since(row["oldest_deadline"], now),
        )


def _seconds_since(moment, now) -> float:
    return max(0.0, (now - moment).total_seconds()) if moment else 0.0


def _token_digest() -> str:
    configured = settings.CATALOGUE_METRICS_TOKEN_HASH.strip().lower()
    if configured and not DIGEST.fullmatch(configured):
        raise ImproperlyConfigured("CATALOGUE_METRICS_TOKEN_HASH is a SHA-256 hex digest")
    return configured


def authorised(request: HttpRequest, configured: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    offered = hashlib.sha256(token.encode()).hexdigest()
    return hmac.compare_digest(offered, configured)


def exposition() -> bytes:
    """Every metric in Prometheus's text format: the requests of every worker process (or of
    this process alone, outside gunicorn), then the outbox."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        requests = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(requests)
    else:
        requests = REGISTRY
    outbox = CollectorRegistry(auto_describe=False)
    outbox.register(OutboxCollector())
    return generate_latest(requests) + generate_latest(outbox)


PATH = "/metrics"


def metrics(request: HttpRequest, configured: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    if not authorised(request, configured):
        response = HttpResponse(
            "a valid metrics token is required\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def endpoint(get_response: Callable[[HttpRequest], HttpResponse]):
    """Middleware: /metrics is answered here when a token digest is configured; every other
    request (and /metrics without one: a 404 like any unknown path) goes on."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path_info == PATH and (configured := _token_digest()):
            return metrics(request, configured)
        return get_response(request)

    return middleware
