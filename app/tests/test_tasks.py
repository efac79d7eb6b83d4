import json
import uuid

import pytest
import requests

from catalogue import imagefetch, tasks
from catalogue.backoff import backoff_ceilings, backoff_delay
from catalogue.models import Event, ImageStatus, Product, Submission

pytestmark = pytest.mark.django_db


IMAGE = "https://example.org/a.png"


def submission(**extra):
    return {
        "id": str(uuid.uuid4()),
        "title": "Python Cookbook",
        "description": "Recipes",
        "image_url": "https://example.org/a.png",
        "submitted_at": "2025-01-02T03:04:05+00:00",
        **extra,
    }


def test_insert_is_idempotent_on_redelivery(store, django_capture_on_commit_callbacks):
    payload = submission()
    first = tasks.insert_product.run(payload)
    second = tasks.insert_product.run(payload)
    assert first["created"] is True
    assert second["created"] is False
    assert Product.objects.filter(id=payload["id"]).count() == 1
    assert Event.objects.filter(product_id=payload["id"], kind="created").count() == 1
    [doc] = store.history(payload["id"])
    assert doc["kind"] == "submission"
    assert doc["data"]["title"] == "Python Cookbook"


def test_indexing_and_image_fetch_are_enqueued_only_after_commit(
    broker, store, django_capture_on_commit_callbacks
):
    payload = submission()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tasks.insert_product.run(payload)
    assert broker.drain() == []  # nothing published while the transaction is open
    assert len(callbacks) == 2
    for callback in callbacks:
        callback()
    published = {(m.queue, m.task, json.dumps(m.args[0])) for m in broker.drain()}
    assert published == {
        ("indexing", "catalogue.tasks.index_products", json.dumps([payload["id"]])),
        ("slow", "catalogue.tasks.fetch_images", json.dumps([[payload["id"], IMAGE]])),
    }


def test_summary_is_fed_by_the_first_round(store):
    batch_id = str(uuid.uuid4())
    results = [{"id": "a", "created": True}, {"id": "b", "created": False}]
    summary = tasks.summarise_batch.run(results, batch_id)
    assert summary["products"] == 2
    assert summary["created"] == 1
    assert summary["already_present"] == 1
    assert store.get_batch(batch_id)["ids"] == ["a", "b"]


def test_index_task_creates_alias_then_indexes_and_records_event(fake_es, store):
    payload = submission()
    tasks.insert_product.run(payload)
    result = tasks.index_product.run(payload["id"])
    assert result == {"id": payload["id"], "indexed": True}
    assert fake_es.aliases["products"]
    [(alias, doc_id, doc)] = fake_es.called("index_document")
    assert (alias, doc_id) == ("products", payload["id"])
    assert doc["title"] == "Python Cookbook"
    assert Event.objects.filter(product_id=payload["id"], kind="indexed").count() == 1


def test_index_task_retries_without_limit_while_elasticsearch_or_postgresql_is_down(
    monkeypatch, fake_es, store, broker
):
    """More failed attempts than Celery's default limit of 3, then Elasticsearch answers: the
    task kept retrying and indexes the product (eagerly run, so retries follow at once)."""
    payload = submission()
    tasks.insert_product.run(payload)
    index_document = fake_es.index_document
    failures = iter([tasks.SearchUnavailable("down")] * 4 + [tasks.OperationalError("gone")] * 2)

    def flaky(*args):
        if (error := next(failures, None)) is not None:
            raise error
        return index_document(*args)

    monkeypatch.setattr(fake_es, "index_document", flaky)
    result = tasks.index_product.apply(args=[payload["id"]])
    assert result.get() == {"id": payload["id"], "indexed": True}
    assert next(failures, None) is None  # every failure was met and retried
    assert payload["id"] in fake_es.documents


def test_reconcile_enqueues_missing_and_stale_documents(fake_es, store, broker):
    fresh, stale, missing = (submission() for _ in range(3))
    for payload in (fresh, stale, missing):
        tasks.insert_product.run(payload)
    broker.drain()
    for payload in (fresh, stale):
        tasks.index_product.run(payload["id"])
    fake_es.documents[stale["id"]]["updated_at"] = "2000-01-01T00:00:00+00:00"
    assert tasks.reconcile_index.run() == {"stale": 2}
    enqueued = {m.args[0] for m in broker.drain() if m.task == "catalogue.tasks.index_product"}
    assert enqueued == {stale["id"], missing["id"]}


def test_reconcile_leaves_products_of_pending_submissions_to_the_outbox(fake_es, store, broker):
    done, pending = submission(), submission()
    for payload in (done, pending):
        Submission.accepted(payload).save()
        tasks.insert_product.run(payload)
    broker.drain()
    tasks.index_product.run(done["id"])
    fake_es.documents[done["id"]]["updated_at"] = "2000-01-01T00:00:00+00:00"
    assert Submission.objects.get(pk=done["id"]).done_at is not None
    assert tasks.reconcile_index.run() == {"stale": 1}
    enqueued = {m.args[0] for m in broker.drain() if m.task == "catalogue.tasks.index_product"}
    assert enqueued == {done["id"]}


def test_backoff_grows_exponentially_and_is_capped():
    assert backoff_ceilings(6, base=2, cap=20) == [2, 4, 8, 16, 20, 20]
    assert backoff_delay(10, base=2, cap=20, rand=lambda: 0.999) <= 20
    assert backoff_delay(3, base=2, cap=60, rand=lambda: 0.5) == 8
    assert backoff_delay(3, base=2, cap=60, rand=lambda: 0.0) == 0
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, base=2, cap=60)


class FakeTask:
    """Stands in for `self` of a bound task: records retry() instead of publishing."""

    class Retry(Exception):
        pass

    def __init__(self, retries):
        self.request = type("Request", (), {"retries": retries})()
        self.retried = []

    def retry(self, countdown, max_retries):
        self.retried.append((countdown, max_retries))
        return self.Retry()


def stored_product(store):
    payload = submission()
    tasks.insert_product.run(payload)
    return payload["id"]


def fetch_attempt(task, product_id, broker):
    """One run of the fetch task, then the recording it sent to the default queue."""
    try:
        return tasks.fetch_image_metadata.run.__func__(task, product_id, "https://e.org/a.png")
    finally:
        for message in broker.drain():
            if message.task == "catalogue.tasks.record_image_attempt":
                assert message.queue == "default"
                tasks.record_image_attempt.run(*message.args)


def test_image_fetch_retries_transient_failures_with_capped_backoff(
    monkeypatch, settings, store, broker
):
    settings.IMAGE_FETCH_MAX_RETRIES = 3
    settings.IMAGE_FETCH_BACKOFF_BASE = 2
    settings.IMAGE_FETCH_BACKOFF_CAP = 5
    monkeypatch.setattr(
        imagefetch, "fetch", lambda url, **kw: imagefetch.FetchResult("unreachable", True, url)
    )
    product_id = stored_product(store)
    broker.drain()
    ceilings = backoff_ceilings(3, base=2, cap=5)  # [2, 4, 5]
    for attempt in range(3):
        task = FakeTask(attempt)
        with pytest.raises(FakeTask.Retry):
            fetch_attempt(task, product_id, broker)
        [(countdown, max_retries)] = task.retried
        assert 0 <= countdown <= ceilings[attempt], (attempt, countdown)
        assert max_retries == 3
    fetches = [d for d in store.history(product_id) if d["kind"] == "image_fetch"]
    assert [d["attempt"] for d in fetches] == [0, 1, 2]
    assert {d["data"]["outcome"] for d in fetches} == {"unreachable"}
    assert Product.objects.get(id=product_id).image_status == ImageStatus.PENDING
    assert [d["kind"] for d in store.history(product_id)].count("image_fetch") == 3


def test_image_fetch_gives_up_after_the_cap_and_never_fails_the_product(
    monkeypatch, settings, store, broker
):
    settings.IMAGE_FETCH_MAX_RETRIES = 3
    monkeypatch.setattr(
        imagefetch, "fetch", lambda url, **kw: imagefetch.FetchResult("unreachable", True, url)
    )
    product_id = stored_product(store)
    broker.drain()
    task = FakeTask(3)
    result = fetch_attempt(task, product_id, broker)
    assert task.retried == []
    assert result["outcome"] == "unreachable"
    assert result["attempts"] == 4
    product = Product.objects.get(id=product_id)
    assert product.image_status == ImageStatus.FAILED
    assert product.image_outcome == "unreachable"
    assert [d["kind"] for d in store.history(product_id)] == ["submission", "image_fetch"]


def test_image_fetch_success_is_kept(monkeypatch, store, broker):
    ok = imagefetch.FetchResult("ok", False, "https://example.org/a.png", 200, "image/png", 1234)
    monkeypatch.setattr(imagefetch, "fetch", lambda url, **kw: ok)
    product_id = stored_product(store)
    broker.drain()
    fetch_attempt(FakeTask(0), product_id, broker)
    product = Product.objects.get(id=product_id)
    assert (product.image_status, product.image_content_type, product.image_size) == (
        "ok",
        "image/png",
        1234,
    )


def test_a_failed_fetch_shows_clients_its_category_never_the_address(
    monkeypatch, store, broker, client
):
    """A refused connection to an internal service says so in its error text; the history
    (public) keeps only "fetch failed" and the category."""
    failed = imagefetch.FetchResult(
        "unreachable",
        False,
        "https://e.org/a.png",
        error="HTTPConnectionPool(host='10.0.2.11', port=5432): Connection refused",
    )
    monkeypatch.setattr(imagefetch, "fetch", lambda url, **kw: failed)
    product_id = stored_product(store)
    broker.drain()
    fetch_attempt(FakeTask(0), product_id, broker)
    body = client.get(f"/api/products/{product_id}/history").content.decode()
    assert "fetch failed: unreachable" in body
    assert "10.0.2.11" not in body
    assert "5432" not in body


def test_the_fetch_task_touches_no_data_service(monkeypatch, broker, django_assert_num_queries):
    """It runs on the `slow` worker, which may be denied the data tier: the URL comes with the
    message and the outcome leaves as a message."""
    ok = imagefetch.FetchResult("ok", False, "https://e.org/a.png", 200, "image/png", 1)
    monkeypatch.setattr(imagefetch, "fetch", lambda url, **kw: ok)
    monkeypatch.setattr(
        "catalogue.tasks.get_store", lambda: pytest.fail("the fetch task used MongoDB")
    )
    with django_assert_num_queries(0):
        tasks.fetch_image_metadata.run.__func__(FakeTask(0), str(uuid.uuid4()), ok.url)
    assert [m.task for m in broker.drain()] == ["catalogue.tasks.record_image_attempt"]


class FakeResponse:
    def __init__(self, status, headers=None):
        self.status_code = status
        self.headers = headers or {}

    def close(self):
        pass


class FakeSession:
    def __init__(self, *responses):
        self.responses = list(responses)
        self.calls = []

    def _next(self, method, url, **kwargs):
        self.calls.append((method, url, kwargs))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response

    def head(self, url, **kwargs):
        return self._next("HEAD", url, **kwargs)

    def get(self, url, **kwargs):
        return self._next("GET", url, **kwargs)


def public(host):
    return ["93.184.216.34"]


def test_fetch_reads_headers_with_a_short_timeout():
    session = FakeSession(FakeResponse(200, {"Content-Type": "image/png", "Content-Length": "42"}))
    result = imagefetch.fetch(
        "https://e.org/a.png", 2.5, session_for=lambda a: session, resolver=public
    )
    assert (result.outcome, result.content_type, result.content_length) == ("ok", "image/png", 42)
    assert session.calls[0][2]["timeout"] == 2.5


def test_fetch_falls_back_to_get_when_head_is_not_allowed():
    session = FakeSession(FakeResponse(405), FakeResponse(200, {"Content-Type": "image/jpeg"}))
    result = imagefetch.fetch(
        "https://e.org/a.jpg", 1, session_for=lambda a: session, resolver=public
    )
    assert result.outcome == "ok"
    assert [c[0] for c in session.calls] == ["HEAD", "GET"]
    assert session.calls[1][2]["stream"] is True


@pytest.mark.parametrize(
    ("response", "outcome", "retryable"),
    [
        (FakeResponse(503), "http_error", True),
        (FakeResponse(429), "http_error", True),
        (FakeResponse(404), "http_error", False),
        (requests.ConnectTimeout("slow"), "unreachable", True),
    ],
)
def test_fetch_classifies_failures(response, outcome, retryable):
    session = FakeSession(response)
    result = imagefetch.fetch("https://e.org/a", 1, session_for=lambda a: session, resolver=public)
    assert (result.outcome, result.retryable) == (outcome, retryable)


def test_fetch_refuses_private_addresses_including_after_a_redirect():
    session = FakeSession(FakeResponse(302, {"Location": "http://internal.example/"}))

    def resolver(host):
        return ["10.0.0.5"] if host == "internal.example" else ["93.184.216.34"]

    result = imagefetch.fetch(
        "https://e.org/a", 1, session_for=lambda a: session, resolver=resolver
    )
    assert (result.outcome, result.retryable) == ("refused", False)
    assert result.hops == ["https://e.org/a"]
    assert len(session.calls) == 1
