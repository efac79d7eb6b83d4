"""/metrics: requests counted and timed per view, the outbox read at scrape time, and nothing
answered without the monitor hosts' token."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from catalogue import metrics
from catalogue.models import Submission

TOKEN = "metrics-test-token-0123456789abcdef"


@pytest.fixture
def enabled(settings):
    settings.CATALOGUE_METRICS_TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()


def scrape(client, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/metrics", headers=headers)


def samples(response) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    assert response.status_code == 200, response.content
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def pending(accepted_ago: timedelta, overdue_by: timedelta | None = None, done=False):
    """A submission accepted `accepted_ago`, whose re-drive deadline passed `overdue_by` ago
    (None: still ahead)."""
    now = timezone.now()
    return Submission.objects.create(
        id=uuid.uuid4(),
        payload={},
        accepted_at=now - accepted_ago,
        sent_at=now - accepted_ago,
        redrive_at=now - overdue_by if overdue_by is not None else now + timedelta(minutes=2),
        done_at=now if done else None,
    )


@pytest.mark.django_db
def test_without_a_configured_digest_there_is_no_endpoint(client, settings):
    settings.CATALOGUE_METRICS_TOKEN_HASH = ""
    assert scrape(client).status_code == 404


@pytest.mark.django_db
def test_the_endpoint_answers_whatever_the_host_header(client, enabled):
    """Prometheus asks each gunicorn by its private address, which ALLOWED_HOSTS need not
    list; anything else with that Host is refused as before."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/metrics", headers=headers, HTTP_HOST="10.9.8.7:8000").status_code == 200
    assert client.get("/healthz", HTTP_HOST="10.9.8.7:8000").status_code == 400


def test_only_get_and_head_are_answered(client, enabled):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/metrics", headers=headers).status_code == 405


@pytest.mark.parametrize(
    "token", [None, "", "wrong-token-0123456789abcdef", TOKEN.upper()], ids=repr
)
def test_a_scrape_without_the_token_is_refused(client, enabled, token):
    response = scrape(client, token)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"django_http" not in response.content


def test_a_basic_or_query_credential_is_no_token(client, enabled):
    assert client.get(f"/metrics?token={TOKEN}").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_a_malformed_digest_is_a_configuration_error(client, settings):
    settings.CATALOGUE_METRICS_TOKEN_HASH = "not-a-digest"
    with pytest.raises(ImproperlyConfigured, match="CATALOGUE_METRICS_TOKEN_HASH"):
        scrape(client)


@pytest.mark.django_db
def test_responses_are_counted_by_status_and_view(client, enabled):
    before = samples(scrape(client))
    name = "django_http_responses_total_by_status_view_method_total"
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz").status_code == 200
    refused = client.post(
        "/api/products/", data=json.dumps({"title": ""}), content_type="application/json"
    )
    assert refused.status_code == 400
    after = samples(scrape(client))
    healthz = {"status": "200", "view": "healthz", "method": "GET"}
    products = {"status": "400", "view": "products", "method": "POST"}
    assert value(after, name, **healthz) - value(before, name, **healthz) == 2
    assert value(after, name, **products) - value(before, name, **products) == 1


@pytest.mark.django_db
def test_latency_is_a_histogram_per_view(client, enabled):
    client.get("/healthz")
    found = samples(scrape(client))
    labels = {"view": "healthz", "method": "GET"}
    count = value(found, "django_http_requests_latency_seconds_by_view_method_count", **labels)
    infinite = value(
        found, "django_http_requests_latency_seconds_by_view_method_bucket", le="+Inf", **labels
    )
    assert count >= 1
    assert infinite == count
    # A bucket at 1 s exists, for the p99 alert's threshold to fall between buckets.
    assert (
        "django_http_requests_latency_seconds_by_view_method_bucket",
        tuple(sorted({**labels, "le": "1.0"}.items())),
    ) in found


@pytest.mark.django_db
def test_an_empty_outbox_reports_zero(client, enabled):
    found = samples(scrape(client))
    assert value(found, "catalogue_outbox_up") == 1
    for name in (
        "catalogue_outbox_pending",
        "catalogue_outbox_overdue",
        "catalogue_outbox_oldest_pending_age_seconds",
        "catalogue_outbox_oldest_overdue_seconds",
    ):
        assert (name, ()) in found, name
        assert value(found, name) == 0, name


@pytest.mark.django_db
def test_the_outbox_figures_count_pending_rows_and_the_most_overdue(client, enabled):
    pending(timedelta(minutes=30), overdue_by=timedelta(minutes=20))
    pending(timedelta(minutes=5), overdue_by=timedelta(minutes=1))
    pending(timedelta(seconds=10))  # its deadline is ahead
    pending(timedelta(hours=2), overdue_by=timedelta(hours=1), done=True)  # done: not counted
    found = samples(scrape(client))
    assert value(found, "catalogue_outbox_pending") == 3
    assert value(found, "catalogue_outbox_overdue") == 2
    assert 30 * 60 <= value(found, "catalogue_outbox_oldest_pending_age_seconds") < 31 * 60
    assert 20 * 60 <= value(found, "catalogue_outbox_oldest_overdue_seconds") < 21 * 60


@pytest.mark.django_db
def test_pending_rows_within_their_deadline_are_not_overdue(client, enabled):
    pending(timedelta(seconds=30))
    found = samples(scrape(client))
    assert value(found, "catalogue_outbox_pending") == 1
    assert value(found, "catalogue_outbox_overdue") == 0
    assert value(found, "catalogue_outbox_oldest_overdue_seconds") == 0


@pytest.mark.django_db
def test_a_database_that_cannot_be_read_still_serves_the_request_metrics(
    client, enabled, monkeypatch
):
    def down(*args, **kwargs):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(Submission.objects, "pending", down)
    found = samples(scrape(client))
    assert value(found, "catalogue_outbox_up") == 0
    assert ("catalogue_outbox_pending", ()) not in found
    assert any(name.startswith("django_http_") for name, _ in found)


@pytest.mark.django_db
def test_the_workers_samples_are_added_up_in_multiprocess_mode(tmp_path, monkeypatch):
    """Under gunicorn each worker process writes its own samples (PROMETHEUS_MULTIPROC_DIR);
    a scrape, whichever worker answers it, adds up every process's."""
    write = (
        "import sys; from prometheus_client import Counter;"
        " Counter('catalogue_test_things', 'Test.').inc(int(sys.argv[1]))"
    )
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for amount in ("3", "4"):
        subprocess.run([sys.executable, "-c", write, amount], env=environment, check=True)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = metrics.exposition().decode()
    assert "catalogue_test_things_total 7.0" in text
    assert "catalogue_outbox_up 1.0" in text


@pytest.mark.django_db
def test_accepted_products_are_counted_once_recorded_by_way_in(client, enabled):
    """One product, a batch of three and a refused product: the counter moves by 1, 3 and 0."""
    name = "catalogue_products_accepted_total"
    before = samples(scrape(client))
    one = {"title": "Counted lamp", "image_url": "https://example.org/lamp.png"}
    answer = client.post("/api/products/", data=json.dumps(one), content_type="application/json")
    assert answer.status_code == 202, answer.content
    batch = {"products": [{**one, "title": f"Counted lamp {n}"} for n in range(3)]}
    answer = client.post(
        "/api/products/batch", data=json.dumps(batch), content_type="application/json"
    )
    assert answer.status_code == 202, answer.content
    refused = client.post(
        "/api/products/", data=json.dumps({"title": ""}), content_type="application/json"
    )
    assert refused.status_code == 400
    after = samples(scrape(client))
    assert value(after, name, via="single") - value(before, name, via="single") == 1
    assert value(after, name, via="batch") - value(before, name, via="batch") == 3


@pytest.mark.django_db
def test_a_submission_that_cannot_be_recorded_is_not_counted(client, enabled, monkeypatch):
    name = "catalogue_products_accepted_total"
    before = samples(scrape(client))

    def refuse(*args, **kwargs):
        raise DatabaseError("the database refused the insert")

    monkeypatch.setattr(Submission.objects, "bulk_create", refuse)
    one = {"title": "Uncounted lamp", "image_url": "https://example.org/lamp.png"}
    answer = client.post("/api/products/", data=json.dumps(one), content_type="application/json")
    assert answer.status_code == 503, answer.content
    after = samples(scrape(client))
    assert value(after, name, via="single") == value(before, name, via="single")
