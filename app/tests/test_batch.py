"""A batch of submissions is worked as one: one INSERT of its products, one insert_many of their
history, one Elasticsearch _bulk request, its image fetches side by side up to a cap; and
running any of it twice stores, records and summarises each product once."""

import json
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalogue import imagefetch, tasks
from catalogue.models import Event, Product, Submission
from catalogue_site.celery import app as celery_app

pytestmark = pytest.mark.django_db

BATCH = "/api/products/batch"
INSERT_BATCH = "catalogue.tasks.insert_batch"
INDEX_PRODUCTS = "catalogue.tasks.index_products"
FETCH_IMAGES = "catalogue.tasks.fetch_images"
FETCH = "catalogue.tasks.fetch_image_metadata"
RECORD_ATTEMPTS = "catalogue.tasks.record_image_attempts"


def items(count):
    return [
        {"title": f"Item {n}", "image_url": f"https://example.org/{n}.png"} for n in range(count)
    ]


def post_batch(client, count, capture):
    with capture(execute=True):
        response = client.post(
            BATCH, data=json.dumps({"products": items(count)}), content_type="application/json"
        )
    assert response.status_code == 202
    return response.json()


def run(message, capture):
    """A worker runs one published message; what it queues on commit is published."""
    with capture(execute=True):
        return celery_app.tasks[message.task].run(*message.args, **message.kwargs)


def work_off(broker, capture, skip=()):
    """Run every queued message, and what they queue, until the queues are empty."""
    seen = []
    for _ in range(10):
        messages = [m for m in broker.drain() if m.task not in skip]
        if not messages:
            return seen
        for message in messages:
            seen.append(message.task)
            run(message, capture)
    pytest.fail(f"the queues never emptied: {seen}")


@pytest.fixture
def images_ok(monkeypatch):
    def fetch(url, **kwargs):
        return imagefetch.FetchResult("ok", False, url, 200, "image/png", 10)

    monkeypatch.setattr(imagefetch, "fetch", fetch)


def statements(queries, prefix):
    return [q["sql"] for q in queries if q["sql"].startswith(prefix)]


def test_a_batch_is_indexed_with_one_bulk_request_and_recorded_with_one_insert_many(
    client, broker, fake_es, store, images_ok, django_capture_on_commit_callbacks
):
    """Seen in the bench: a product took a Celery round per step, one document at a time."""
    body = post_batch(client, 5, django_capture_on_commit_callbacks)
    ids = [p["id"] for p in body["products"]]
    work_off(broker, django_capture_on_commit_callbacks)

    assert fake_es.called("index_document") == []
    # Stored, then indexed again once the image results are in: one request each time.
    bulk = fake_es.called("index_documents")
    assert len(bulk) == 2
    for _, documents in bulk:
        assert sorted(doc_id for doc_id, _ in documents) == sorted(ids)
    assert store.submission_writes == [("insert_many", 5)]
    assert Submission.objects.filter(done_at__isnull=False).count() == 5
    assert all(p.image_status == "ok" for p in Product.objects.all())
    assert store.get_batch(body["batch_id"])["products"] == 5


def test_a_batch_is_stored_with_one_insert_and_queues_one_indexing_and_one_image_message(
    client, broker, store, django_capture_on_commit_callbacks
):
    body = post_batch(client, 4, django_capture_on_commit_callbacks)
    ids = [p["id"] for p in body["products"]]
    [message] = broker.drain()
    with CaptureQueriesContext(connection) as queries:
        result = run(message, django_capture_on_commit_callbacks)

    assert result == {"batch_id": body["batch_id"], "products": 4, "created": 4}
    assert len(statements(queries, 'INSERT INTO "catalogue_product"')) == 1
    assert len(statements(queries, 'INSERT INTO "catalogue_event"')) == 1
    assert Product.objects.count() == 4
    published = {m.task: m for m in broker.drain()}
    assert set(published) == {INDEX_PRODUCTS, FETCH_IMAGES}
    assert published[INDEX_PRODUCTS].queue == "indexing"
    assert published[INDEX_PRODUCTS].args == [ids]
    assert published[FETCH_IMAGES].queue == "slow"
    assert [pid for pid, _ in published[FETCH_IMAGES].args[0]] == ids
    summary = store.get_batch(body["batch_id"])
    assert (summary["status"], summary["products"], summary["created"]) == ("done", 4, 4)
    assert summary["ids"] == ids
    for submission in Submission.objects.all():
        assert submission.stored_at and submission.history_at and not submission.indexed_at
        assert submission.claimed_at < submission.sent_at  # its indexing is queued


def test_a_redelivered_batch_writes_history_once_per_product_and_keeps_its_summary(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    body = post_batch(client, 3, django_capture_on_commit_callbacks)
    ids = [p["id"] for p in body["products"]]
    [message] = broker.drain()
    run(message, django_capture_on_commit_callbacks)
    first = {pid: store.history(pid) for pid in ids}
    broker.drain()

    # Redelivered (a worker killed before its acknowledgement): nothing is written again,
    # and only the indexing, still missing, is queued again.
    run(message, django_capture_on_commit_callbacks)
    assert store.submission_writes == [("insert_many", 3)]
    assert [m.task for m in broker.drain()] == [INDEX_PRODUCTS]

    # The first delivery died after writing the history and before recording it: the next
    # one sends the documents again and MongoDB keeps the first of each.
    Submission.objects.update(history_at=None)
    run(message, django_capture_on_commit_callbacks)
    assert store.submission_writes == [("insert_many", 3), ("insert_many", 3)]
    assert {pid: store.history(pid) for pid in ids} == first
    assert [m.task for m in broker.drain()] == [INDEX_PRODUCTS, FETCH_IMAGES]

    assert Product.objects.count() == 3
    assert Event.objects.filter(kind="created").count() == 3
    summary = store.get_batch(body["batch_id"])
    assert (summary["created"], summary["already_present"]) == (3, 0)


def test_a_batch_after_a_redriven_member_stores_and_records_that_member_once(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    body = post_batch(client, 2, django_capture_on_commit_callbacks)
    [message] = broker.drain()
    member = message.args[0][0]
    with django_capture_on_commit_callbacks(execute=True):
        tasks.insert_product.run(member)  # re-driven alone, and run first
    broker.drain()
    result = run(message, django_capture_on_commit_callbacks)

    assert result["created"] == 1
    assert Product.objects.count() == 2
    assert Event.objects.filter(kind="created").count() == 2
    assert store.submission_writes == [("insert_many", 1), ("insert_many", 1)]
    summary = store.get_batch(body["batch_id"])
    assert (summary["created"], summary["already_present"]) == (1, 1)


def test_a_batch_indexing_marks_its_submissions_and_retries_while_elasticsearch_is_down(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    post_batch(client, 3, django_capture_on_commit_callbacks)
    [message] = broker.drain()
    run(message, django_capture_on_commit_callbacks)
    [indexing] = [m for m in broker.drain() if m.task == INDEX_PRODUCTS]
    fake_es.down = True
    with pytest.raises(tasks.SearchUnavailable):
        run(indexing, django_capture_on_commit_callbacks)
    assert not Submission.objects.filter(indexed_at__isnull=False).exists()
    fake_es.down = False
    assert run(indexing, django_capture_on_commit_callbacks) == {
        "indexed": 3,
        "created": 3,
        "missing": 0,
    }
    assert Submission.objects.filter(done_at__isnull=False).count() == 3
    assert Event.objects.filter(kind="indexed").count() == 3


def test_a_batch_fetches_its_images_side_by_side_up_to_the_cap(monkeypatch, settings, broker):
    """Three at a time: each fetch waits at a barrier for two others (so fewer at once would
    time out), and never more than three are in flight."""
    settings.IMAGE_FETCH_CONCURRENCY = 3
    settings.IMAGE_FETCH_MAX_RETRIES = 4
    barrier = threading.Barrier(3, timeout=5)
    lock = threading.Lock()
    in_flight, most = [0], [0]

    def fetch(url, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            barrier.wait()
        finally:
            with lock:
                in_flight[0] -= 1
        if url.endswith("/down.png"):
            return imagefetch.FetchResult("unreachable", True, url, error="refused")
        return imagefetch.FetchResult("ok", False, url, 200, "image/png", 10)

    monkeypatch.setattr(imagefetch, "fetch", fetch)
    urls = [f"https://example.org/{n}.png" for n in range(5)] + ["https://example.org/down.png"]
    work = [[f"p{n}", url] for n, url in enumerate(urls)]

    assert tasks.fetch_images.run(work) == {"fetched": 6, "retried": 1}
    assert most[0] == 3
    messages = {m.task: m for m in broker.drain()}
    assert set(messages) == {RECORD_ATTEMPTS, FETCH}
    [attempts] = messages[RECORD_ATTEMPTS].args
    assert [(pid, attempt, final) for pid, attempt, _, final in attempts] == [
        ("p0", 0, True),
        ("p1", 0, True),
        ("p2", 0, True),
        ("p3", 0, True),
        ("p4", 0, True),
        ("p5", 0, False),
    ]
    retry = messages[FETCH]
    assert (retry.queue, retry.args) == ("slow", ["p5", "https://example.org/down.png"])
    assert retry.headers["retries"] == 1  # the product's own task goes on at attempt 1
    assert retry.headers["eta"] is not None


def test_the_batch_fetch_task_touches_no_data_service(
    monkeypatch, broker, django_assert_num_queries
):
    """Like fetch_image_metadata it runs on the `slow` worker, which may be denied the data
    tier: the URLs come with the message and the outcomes leave as one message."""
    monkeypatch.setattr(
        imagefetch, "fetch", lambda url, **kw: imagefetch.FetchResult("ok", False, url, 200)
    )
    monkeypatch.setattr(
        "catalogue.tasks.get_store", lambda: pytest.fail("the fetch task used MongoDB")
    )
    with django_assert_num_queries(0):
        tasks.fetch_images.run([["p1", "https://e.org/1.png"], ["p2", "https://e.org/2.png"]])
    assert [m.task for m in broker.drain()] == [RECORD_ATTEMPTS]
