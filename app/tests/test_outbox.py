"""The submission outbox: what a 202 promises, when the API answers 503, the re-drive and the
pruning, and that running anything twice stores, indexes and records a product once."""

import json
import uuid
from datetime import timedelta

import pytest
from django.db import InterfaceError, OperationalError, connections
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable

from catalogue import tasks
from catalogue.models import Event, Product, Submission

GOOD = {"title": "Python Cookbook", "image_url": "https://example.org/cover.png"}
INSERT = "catalogue.tasks.insert_product"
INDEX = "catalogue.tasks.index_product"
FETCH = "catalogue.tasks.fetch_image_metadata"


def post(client, data, path="/api/products/"):
    return client.post(path, data=json.dumps(data), content_type="application/json")


def overdue(*product_ids, by=timedelta(seconds=1)):
    """Move the re-drive deadline of these submissions into the past."""
    Submission.objects.filter(pk__in=product_ids).update(redrive_at=timezone.now() - by)


def finished_long_ago(*product_ids, days):
    Submission.objects.filter(pk__in=product_ids).update(
        done_at=timezone.now() - timedelta(days=days)
    )


def recorded(**fields):
    """A submission as the request records it, with a fresh product id."""
    product_id = str(uuid.uuid4())
    payload = {
        "id": product_id,
        "title": f"Item {product_id[:8]}",
        "description": "",
        "image_url": "https://example.org/a.png",
        "submitted_at": timezone.now().isoformat(),
    }
    submission = Submission.accepted(payload, fields.pop("batch_id", None))
    for name, value in fields.items():
        setattr(submission, name, value)
    submission.save()
    return submission


# --- the request: recorded first, published after the commit, or 503 ------------------------


@pytest.mark.django_db(transaction=True)
def test_the_submission_is_committed_before_its_message_is_published(client, broker, monkeypatch):
    """Each request runs in its own transaction here, as in production: the publish must come
    after the commit, when the row is there for the re-drive whatever happens to the message."""
    seen_at_publish = []
    publish = tasks.insert_product.apply_async

    def spy(args, *rest, **kwargs):
        connection = connections["default"]
        seen_at_publish.append(
            (
                connection.in_atomic_block,
                Submission.objects.filter(pk=args[0]["id"], done_at__isnull=True).exists(),
            )
        )
        return publish(args, *rest, **kwargs)

    monkeypatch.setattr(tasks.insert_product, "apply_async", spy)
    response = post(client, GOOD)

    assert response.status_code == 202
    assert seen_at_publish == [(False, True)]  # outside any transaction, the row committed
    [message] = broker.drain()
    submission = Submission.objects.get()
    assert str(submission.pk) == response.json()["id"] == message.args[0]["id"]
    assert submission.payload == message.args[0]
    assert submission.sends == 1
    assert submission.redrive_at - submission.accepted_at == timedelta(seconds=120)
    assert Product.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_publish_the_broker_refuses_is_still_accepted_and_left_to_the_redrive(
    client, broker, monkeypatch
):
    def refuse(*args, **kwargs):
        raise BrokerUnavailable("connection refused")

    monkeypatch.setattr(tasks.insert_product, "apply_async", refuse)
    response = post(client, GOOD)
    assert response.status_code == 202
    assert broker.drain() == []
    monkeypatch.undo()

    product_id = response.json()["id"]
    overdue(product_id)
    assert tasks.redrive_submissions.run() == {"redriven": 1, "batches": 0}
    [message] = broker.drain()
    assert message.task == INSERT
    assert message.args[0] == Submission.objects.get(pk=product_id).payload


def fail_to_connect(monkeypatch):
    def refuse():
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(connections["default"], "ensure_connection", refuse)


def fail_to_commit(monkeypatch):
    def refuse():
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(connections["default"], "commit", refuse)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", [fail_to_connect, fail_to_commit], ids=["connect", "commit"])
@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/products/", GOOD), ("/api/products/batch", {"products": [GOOD, GOOD]})],
    ids=["single", "batch"],
)
def test_a_submission_the_database_cannot_record_is_503_with_retry_after_and_nothing_kept(
    client, broker, monkeypatch, settings, failure, path, body
):
    settings.CATALOGUE_RETRY_AFTER = 7
    failure(monkeypatch)
    response = post(client, body, path)
    monkeypatch.undo()

    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    assert "id" not in response.json()
    assert broker.drain() == []
    assert Submission.objects.count() == 0
    assert Product.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_form_says_503_with_retry_after_when_the_database_cannot_record(
    member, broker, monkeypatch
):
    fail_to_commit(monkeypatch)
    response = member.post("/", GOOD)
    monkeypatch.undo()

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"cannot be added right now" in response.content
    assert broker.drain() == []
    assert Submission.objects.count() == 0


# --- the tasks mark the steps; done means stored, history written and indexed -----------------


@pytest.mark.django_db
def test_a_submission_is_done_only_once_stored_recorded_and_indexed(fake_es, store):
    submission = recorded()
    product_id = str(submission.pk)
    tasks.insert_product.run(submission.payload)
    submission.refresh_from_db()
    assert submission.stored_at and submission.history_at
    assert submission.indexed_at is None and submission.done_at is None

    tasks.index_product.run(product_id)
    submission.refresh_from_db()
    assert submission.indexed_at is not None
    assert submission.done_at is not None


@pytest.mark.django_db
def test_a_submission_whose_history_failed_is_not_done(fake_es, store, monkeypatch):
    submission = recorded()

    def mongodb_down(*args):
        raise tasks.PyMongoError("no servers")

    monkeypatch.setattr(store, "save_submission", mongodb_down)
    with pytest.raises(tasks.PyMongoError):
        tasks.insert_product.run(submission.payload)
    tasks.index_product.run(str(submission.pk))
    submission.refresh_from_db()
    assert submission.stored_at and submission.indexed_at
    assert submission.history_at is None and submission.done_at is None
    assert list(Submission.objects.due(timezone.now() + timedelta(minutes=3))) == [submission]


# --- the re-drive --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_redrive_sends_only_overdue_submissions_that_are_not_done(broker, settings):
    settings.CATALOGUE_REDRIVE_AFTER = 60
    lost = recorded()
    half_done = recorded(stored_at=timezone.now(), indexed_at=timezone.now())
    not_yet_due = recorded()
    done = recorded(done_at=timezone.now())
    overdue(lost.pk, half_done.pk, done.pk, by=timedelta(seconds=5))
    overdue(not_yet_due.pk, by=-timedelta(seconds=30))

    before = timezone.now()
    assert tasks.redrive_submissions.run() == {"redriven": 2, "batches": 0}
    after = timezone.now()

    messages = broker.drain()
    assert {m.task for m in messages} == {INSERT}
    assert sorted(m.args[0]["id"] for m in messages) == sorted([str(lost.pk), str(half_done.pk)])
    assert {m.args[0]["id"]: m.args[0] for m in messages}[str(lost.pk)] == lost.payload
    for submission in (lost, half_done):
        submission.refresh_from_db()
        assert submission.sends == 2
        # The second send waits twice as long.
        assert before + timedelta(seconds=120) <= submission.redrive_at
        assert submission.redrive_at <= after + timedelta(seconds=120)
    for untouched in (not_yet_due, done):
        untouched.refresh_from_db()
        assert untouched.sends == 1

    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    assert broker.drain() == []


def test_the_redrive_deadline_doubles_per_send_up_to_the_cap(settings):
    settings.CATALOGUE_REDRIVE_AFTER = 30
    settings.CATALOGUE_REDRIVE_BACKOFF_CAP = 200
    delays = [Submission.redrive_delay(sends).total_seconds() for sends in range(1, 7)]
    assert delays == [30, 60, 120, 200, 200, 200]


@pytest.mark.django_db
def test_a_stored_submission_with_its_history_is_only_indexed_again(broker):
    """After an Elasticsearch outage the insert is done: sending it again would queue another
    image fetch per product, so only the missing indexing is re-driven."""
    waiting = recorded(stored_at=timezone.now(), history_at=timezone.now())
    no_history = recorded(stored_at=timezone.now())
    overdue(waiting.pk, no_history.pk)
    assert tasks.redrive_submissions.run()["redriven"] == 2
    messages = broker.drain()
    sent = {(m.task, m.args[0] if m.task == INDEX else m.args[0]["id"]) for m in messages}
    assert sent == {(INDEX, str(waiting.pk)), (INSERT, str(no_history.pk))}
    waiting.refresh_from_db()
    assert waiting.sends == 2


@pytest.mark.django_db
def test_a_duplicate_insert_of_a_stored_submission_queues_only_the_missing_indexing(
    broker, fake_es, store, django_capture_on_commit_callbacks
):
    submission = recorded()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.insert_product.run(submission.payload)
    assert sorted(m.task for m in broker.drain()) == [FETCH, INDEX]
    assert tasks.insert_product.run(submission.payload) == {
        "id": str(submission.pk),
        "created": False,
    }
    assert [(m.task, m.args[0]) for m in broker.drain()] == [(INDEX, str(submission.pk))]
    tasks.index_product.run(str(submission.pk))
    tasks.insert_product.run(submission.payload)
    assert broker.drain() == []
    assert Product.objects.filter(pk=submission.pk).count() == 1


@pytest.mark.django_db
def test_the_redrive_sends_at_most_a_batch_per_run(broker, settings):
    settings.CATALOGUE_REDRIVE_BATCH = 2
    submissions = [recorded() for _ in range(3)]
    overdue(*(s.pk for s in submissions))
    assert tasks.redrive_submissions.run()["redriven"] == 2
    assert tasks.redrive_submissions.run()["redriven"] == 1
    assert len(broker.drain()) == 3


@pytest.mark.django_db
def test_a_publish_that_fails_during_the_redrive_leaves_the_submission_due(broker, monkeypatch):
    submission = recorded()
    overdue(submission.pk)

    def refuse(*args, **kwargs):
        raise BrokerUnavailable("connection refused")

    monkeypatch.setattr(tasks.insert_product, "apply_async", refuse)
    with pytest.raises(BrokerUnavailable):
        tasks.redrive_submissions.run()
    submission.refresh_from_db()
    assert submission.sends == 1
    assert list(Submission.objects.due(timezone.now())) == [submission]


@pytest.mark.django_db
def test_a_redriven_submission_racing_its_first_delivery_stores_indexes_and_records_once(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    """The first message was slow, not lost: it and the re-driven one both run, and so do the
    indexing tasks each of them enqueues."""
    with django_capture_on_commit_callbacks(execute=True):
        product_id = post(client, GOOD).json()["id"]
    [first] = broker.drain()
    overdue(product_id)
    tasks.redrive_submissions.run()
    [again] = broker.drain()
    assert again.args == first.args

    for message in (first, again, first):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.insert_product.run(*message.args)
    indexing = [m for m in broker.drain() if m.task == "catalogue.tasks.index_product"]
    assert len(indexing) == 3
    for message in indexing:
        tasks.index_product.run(*message.args)

    assert Product.objects.filter(id=product_id).count() == 1
    assert Event.objects.filter(product_id=product_id, kind="created").count() == 1
    assert {doc_id for _, doc_id, _ in fake_es.called("index_document")} == {product_id}
    assert list(fake_es.documents) == [product_id]
    [history] = store.history(product_id)
    assert history["kind"] == "submission"
    assert Submission.objects.get(pk=product_id).done_at is not None
    overdue(product_id)
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}


@pytest.mark.django_db
def test_a_batch_whose_chord_lost_a_member_gets_its_summary_from_the_redrive(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    """A re-driven member runs outside the chord, so the chord never fires: once every member
    is done and the deadline has passed, the re-drive sends the summary itself, once."""
    with django_capture_on_commit_callbacks(execute=True):
        body = post(client, {"products": [GOOD, GOOD]}, "/api/products/batch").json()
    batch_id = body["batch_id"]
    members = [message.args[0] for message in broker.drain()]
    for payload in members:
        tasks.insert_product.run(payload)
        tasks.index_product.run(payload["id"])
    broker.drain()
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}  # the chord's turn

    Submission.objects.update(done_at=timezone.now() - timedelta(seconds=121))
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 1}
    [summary] = broker.drain()
    assert summary.task == "catalogue.tasks.summarise_batch"
    tasks.summarise_batch.run(*summary.args)

    kept = store.get_batch(batch_id)
    assert (kept["products"], kept["created"]) == (2, 2)
    assert sorted(kept["ids"]) == sorted(p["id"] for p in body["products"])
    assert not Submission.objects.filter(summarised_at__isnull=True).exists()
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}


@pytest.mark.django_db
def test_a_batch_with_a_member_not_done_waits_for_it(broker):
    batch_id = str(uuid.uuid4())
    long_ago = timezone.now() - timedelta(hours=1)
    recorded(batch_id=batch_id, done_at=long_ago)
    waiting = recorded(batch_id=batch_id)
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    Submission.objects.filter(pk=waiting.pk).update(done_at=long_ago)
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 1}


# --- pruning -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_done_submissions_are_pruned_after_the_retention(settings):
    settings.CATALOGUE_SUBMISSION_RETENTION_DAYS = 7
    old_done = recorded()
    recent_done = recorded()
    old_pending = recorded(accepted_at=timezone.now() - timedelta(days=30))
    batch_id = str(uuid.uuid4())
    summarised = recorded(batch_id=batch_id, summarised_at=timezone.now())
    unsummarised = recorded(batch_id=str(uuid.uuid4()))
    finished_long_ago(old_done.pk, summarised.pk, unsummarised.pk, days=8)
    finished_long_ago(recent_done.pk, days=6)

    assert tasks.prune_submissions.run() == {"deleted": 2}
    left = {str(pk) for pk in Submission.objects.values_list("pk", flat=True)}
    assert left == {str(s.pk) for s in (recent_done, old_pending, unsummarised)}
