"""Single products under load take the batch path: an insert_product takes along the single
submissions waiting behind it (group commit) and works them as insert_batch does, and their own
messages, when they come, find the work done and queue nothing. Idle, the group is the one
product, worked at once."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from catalogue import imagefetch, tasks
from catalogue.models import Event, Product, Submission
from catalogue_site.celery import app as celery_app

pytestmark = pytest.mark.django_db

INSERT = "catalogue.tasks.insert_product"
INDEX_PRODUCTS = "catalogue.tasks.index_products"
FETCH_IMAGES = "catalogue.tasks.fetch_images"


def post_singles(client, count, capture):
    ids = []
    for n in range(count):
        with capture(execute=True):
            response = client.post(
                "/api/products/",
                data=json.dumps({"title": f"Single {n}", "image_url": f"https://e.org/{n}.png"}),
                content_type="application/json",
            )
        assert response.status_code == 202
        ids.append(response.json()["id"])
    return ids


def run(message, capture):
    with capture(execute=True):
        return celery_app.tasks[message.task].run(*message.args, **message.kwargs)


@pytest.fixture
def images_ok(monkeypatch):
    monkeypatch.setattr(
        imagefetch,
        "fetch",
        lambda url, **kw: imagefetch.FetchResult("ok", False, url, 200, "image/png", 10),
    )


def test_one_insert_stores_indexes_and_records_the_singles_waiting_behind_it(
    client, broker, fake_es, store, images_ok, django_capture_on_commit_callbacks
):
    """Seen in the bench: 600 single POSTs at 40/s ended 12.7 products/s end to end, four
    tasks a product on the default worker's two processes."""
    capture = django_capture_on_commit_callbacks
    ids = post_singles(client, 5, capture)
    first, *later = broker.drain()
    assert [m.task for m in (first, *later)] == [INSERT] * 5

    with CaptureQueriesContext(connection) as queries:
        result = run(first, capture)

    assert result == {"id": ids[0], "created": True, "taken": 4}
    inserts = [q["sql"] for q in queries if q["sql"].startswith('INSERT INTO "catalogue_product"')]
    assert len(inserts) == 1
    assert Product.objects.count() == 5
    assert Event.objects.filter(kind="created").count() == 5
    assert store.submission_writes == [("insert_many", 5)]
    published = {m.task: m for m in broker.drain()}
    assert set(published) == {INDEX_PRODUCTS, FETCH_IMAGES}
    assert sorted(published[INDEX_PRODUCTS].args[0]) == sorted(ids)
    assert sorted(pid for pid, _ in published[FETCH_IMAGES].args[0]) == sorted(ids)

    # Their own messages come later: each finds its product stored with its history.
    for message in later:
        assert run(message, capture) == {"id": message.args[0]["id"], "created": False}
    assert broker.drain() == []
    assert store.submission_writes == [("insert_many", 5)]

    # The rest of the chain, batched too: one _bulk for the products, one after the images.
    run(published[INDEX_PRODUCTS], capture)
    run(published[FETCH_IMAGES], capture)
    for message in broker.drain():
        run(message, capture)
    for message in broker.drain():
        run(message, capture)
    assert broker.drain() == []
    assert fake_es.called("index_document") == []
    assert len(fake_es.called("index_documents")) == 2
    assert Submission.objects.filter(done_at__isnull=False).count() == 5
    assert set(Product.objects.values_list("image_status", flat=True)) == {"ok"}
    # Indexed and done: a message arriving now still queues nothing.
    for message in later:
        run(message, capture)
    assert broker.drain() == []


def test_a_group_is_at_most_a_batch_and_takes_the_oldest_sent_first(
    client, broker, store, settings, django_capture_on_commit_callbacks
):
    settings.CATALOGUE_BATCH_MAX = 3
    ids = post_singles(client, 5, django_capture_on_commit_callbacks)
    messages = broker.drain()
    Submission.objects.filter(pk=ids[1]).update(sent_at=timezone.now() + timedelta(seconds=5))

    assert run(messages[4], django_capture_on_commit_callbacks)["taken"] == 2
    stored = set(Submission.objects.filter(stored_at__isnull=False).values_list("pk", flat=True))
    assert {str(pk) for pk in stored} == {ids[4], ids[0], ids[2]}


def test_batch_members_are_never_taken(client, broker, store, django_capture_on_commit_callbacks):
    """A batch's members are its own insert_batch's: it writes the batch's summary."""
    capture = django_capture_on_commit_callbacks
    with capture(execute=True):
        client.post(
            "/api/products/batch",
            data=json.dumps(
                {"products": [{"title": "Member", "image_url": "https://e.org/m.png"}] * 3}
            ),
            content_type="application/json",
        )
    [single] = post_singles(client, 1, capture)
    [message] = [m for m in broker.drain() if m.task == INSERT]

    assert run(message, capture) == {"id": single, "created": True, "taken": 0}
    assert [str(pk) for pk in Product.objects.values_list("pk", flat=True)] == [single]
    members = Submission.objects.filter(batch_id__isnull=False)
    assert not members.filter(claimed_at__isnull=False).exists()


def test_a_single_another_worker_has_claimed_is_not_taken(
    client, broker, store, django_capture_on_commit_callbacks
):
    """Its insert is running elsewhere (claimed since its send): taking it would only make one
    of the two wait for the other's row lock."""
    _, theirs = post_singles(client, 2, django_capture_on_commit_callbacks)
    first, _ = broker.drain()
    Submission.claim([theirs])

    assert run(first, django_capture_on_commit_callbacks)["taken"] == 0
    assert not Product.objects.filter(pk=theirs).exists()


def test_singles_being_taken_by_another_worker_are_skipped_not_waited_for(settings):
    """On PostgreSQL the candidates are locked with SKIP LOCKED: two inserts taking at the same
    moment take different submissions and neither waits (SQLite, here, has no row locks)."""
    from django.db.backends.postgresql.base import DatabaseWrapper  # noqa: PLC0415

    postgresql = DatabaseWrapper({**settings.DATABASES["default"], "ENGINE": "x", "NAME": "x"})
    postgresql.connection, postgresql.autocommit = object(), False  # compiles, never connects
    query = Submission.objects.to_take("00000000-0000-0000-0000-000000000000", 7)
    sql, _ = query.query.get_compiler(connection=postgresql).as_sql()
    assert sql.endswith("LIMIT 7 FOR UPDATE SKIP LOCKED")
    assert '"batch_id" IS NULL' in sql


def test_a_taken_single_without_history_is_left_to_its_taker_until_re_driven(
    client, broker, store, django_capture_on_commit_callbacks
):
    """Its taker stored it and is writing its history (or died doing so): its own message
    leaves it. The re-drive sends it again when the taker died, and that copy does the work."""
    capture = django_capture_on_commit_callbacks
    _, other = post_singles(client, 2, capture)
    first, own = broker.drain()
    run(first, capture)
    broker.drain()
    Submission.objects.filter(pk=other).update(history_at=None)

    assert run(own, capture) == {"id": other, "created": False}
    assert broker.drain() == []

    Submission.objects.filter(pk=other).update(sends=2)  # re-driven
    assert run(own, capture) == {"id": other, "created": False, "taken": 0}
    assert Submission.objects.get(pk=other).history_at is not None
    assert store.submission_writes == [("insert_many", 2), ("insert_many", 1)]


def test_singles_taken_by_an_insert_that_failed_are_worked_by_their_own_messages(
    client, broker, store, monkeypatch, django_capture_on_commit_callbacks
):
    """MongoDB down while the taker writes the group's history: it retries its own product,
    and hands the others back, so they do not wait for the claim's lease to be re-driven."""
    capture = django_capture_on_commit_callbacks
    mine, other = post_singles(client, 2, capture)
    first, own = broker.drain()
    save = store.save_submissions

    def mongodb_down(*args):
        raise tasks.PyMongoError("no servers")

    monkeypatch.setattr(store, "save_submissions", mongodb_down)
    with pytest.raises(tasks.PyMongoError):
        run(first, capture)
    assert Submission.objects.get(pk=other).claimed_at is None
    broker.drain()

    monkeypatch.setattr(store, "save_submissions", save)
    assert run(own, capture) == {"id": other, "created": False, "taken": 0}
    assert Submission.objects.get(pk=other).history_at is not None
    assert Submission.objects.get(pk=mine).history_at is None  # its own retry writes it
