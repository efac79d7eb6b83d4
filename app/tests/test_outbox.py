"""The submission outbox: what a 202 promises, when the API answers 503, the re-drive and the
pruning, and that running anything twice stores, indexes and records a product once."""

import json
import uuid
from datetime import timedelta

import pytest
from django.db import InterfaceError, OperationalError, connections
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable

from catalogue import tasks
from catalogue.models import Event, Product, QueueProbe, Submission

GOOD = {"title": "Python Cookbook", "image_url": "https://example.org/cover.png"}
INSERT = "catalogue.tasks.insert_product"
INDEX = "catalogue.tasks.index_product"
INDEX_ALL = "catalogue.tasks.index_products"
FETCH_ALL = "catalogue.tasks.fetch_images"
PROBE = "catalogue.tasks.probe_queue"


def post(client, data, path="/api/products/"):
    return client.post(path, data=json.dumps(data), content_type="application/json")


def probes_came_back(sent):
    """A probe published at `sent` was consumed from every queue, long enough ago that any
    message delivered before it has started."""
    ran = timezone.now() - timedelta(seconds=91)
    for queue in tasks.OUTBOX_QUEUES:
        QueueProbe.objects.create(queue=queue, sent_at=sent, ran_at=ran)


def lost_in_the_broker(*product_ids):
    """These submissions' messages were dropped: sent ten minutes ago, never taken, and a probe
    published after them has since come back through the queues."""
    long_ago = timezone.now() - timedelta(minutes=10)
    Submission.objects.filter(pk__in=product_ids).update(sent_at=long_ago, redrive_at=long_ago)
    probes_came_back(sent=timezone.now() - timedelta(minutes=5))


def sent(messages, task=INSERT):
    return [m for m in messages if m.task == task]


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
    assert submission.sent_at == submission.accepted_at
    assert submission.claimed_at is None
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
    lost_in_the_broker(product_id)
    assert tasks.redrive_submissions.run() == {"redriven": 1, "batches": 0}
    [message] = sent(broker.drain())
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
def test_a_submission_whose_history_failed_is_not_done(fake_es, store, monkeypatch, settings):
    submission = recorded()

    def mongodb_down(*args):
        raise tasks.PyMongoError("no servers")

    monkeypatch.setattr(store, "save_submissions", mongodb_down)
    with pytest.raises(tasks.PyMongoError):
        tasks.insert_product.run(submission.payload)
    tasks.index_product.run(str(submission.pk))
    submission.refresh_from_db()
    assert submission.stored_at and submission.indexed_at
    assert submission.history_at is None and submission.done_at is None
    # Claimed by the tasks: due once their lease runs out, no probe needed.
    lease = timedelta(seconds=settings.CATALOGUE_CLAIM_LEASE)
    assert list(Submission.objects.to_send_again(timezone.now() + lease / 2, None)) == []
    later = timezone.now() + lease + timedelta(seconds=1)
    assert list(Submission.objects.to_send_again(later, None)) == [submission]


# --- the re-drive --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_redrive_sends_only_lost_submissions_that_are_not_done(broker, settings):
    settings.CATALOGUE_REDRIVE_AFTER = 60
    lost = recorded()
    half_done = recorded(stored_at=timezone.now(), indexed_at=timezone.now())
    Submission.claim([half_done.pk])
    working = recorded()
    Submission.claim([working.pk])
    done = recorded(done_at=timezone.now())
    lost_in_the_broker(lost.pk, done.pk)
    # The claim's lease has run out for one, not for the other.
    lease = timedelta(seconds=settings.CATALOGUE_CLAIM_LEASE)
    Submission.objects.filter(pk=half_done.pk).update(redrive_at=timezone.now() - lease)

    before = timezone.now()
    assert tasks.redrive_submissions.run() == {"redriven": 2, "batches": 0}
    after = timezone.now()

    messages = sent(broker.drain())
    assert sorted(m.args[0]["id"] for m in messages) == sorted([str(lost.pk), str(half_done.pk)])
    assert {m.args[0]["id"]: m.args[0] for m in messages}[str(lost.pk)] == lost.payload
    for submission in (lost, half_done):
        submission.refresh_from_db()
        assert submission.sends == 2
        assert before <= submission.sent_at <= after
        # The second send waits twice as long.
        assert before + timedelta(seconds=120) <= submission.redrive_at
        assert submission.redrive_at <= after + timedelta(seconds=120)
    for untouched in (working, done):
        untouched.refresh_from_db()
        assert untouched.sends == 1

    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    assert sent(broker.drain()) == []


def consume_probes(broker, aged=timedelta(0)):
    """A worker takes the probes queued so far; `aged`: as long ago as that."""
    for message in sent(broker.drain(), PROBE):
        tasks.probe_queue.run(*message.args)
    QueueProbe.objects.update(ran_at=F("ran_at") - aged)


@pytest.mark.django_db
def test_a_message_waiting_behind_a_backlog_is_not_sent_again(
    client, broker, store, django_capture_on_commit_callbacks
):
    """Seen under load: with a backlog of about 14,000 messages, every submission not done two
    minutes after its send was sent again although its message was only waiting, 500 a minute,
    and the copies joined the backlog. Half an hour after its send, no worker has taken it and
    no probe published after it has come back: it is not sent again, however often the
    re-drive runs, until a worker has it."""
    with django_capture_on_commit_callbacks(execute=True):
        product_id = post(client, GOOD).json()["id"]
    half_an_hour_ago = timezone.now() - timedelta(minutes=30)
    Submission.objects.filter(pk=product_id).update(
        accepted_at=half_an_hour_ago, sent_at=half_an_hour_ago, redrive_at=half_an_hour_ago
    )
    probes_came_back(sent=half_an_hour_ago - timedelta(minutes=1))  # one published before it
    for _ in range(3):
        assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    messages = broker.drain()
    [first] = sent(messages)
    assert len(sent(messages, PROBE)) == 3 * len(tasks.OUTBOX_QUEUES)

    # The worker reaches it, then the probes queued behind it: its indexing is queued now.
    with django_capture_on_commit_callbacks(execute=True):
        tasks.insert_product.run(*first.args)
    for message in sent(messages, PROBE):
        tasks.probe_queue.run(*message.args)
    QueueProbe.objects.update(ran_at=F("ran_at") - timedelta(seconds=91))
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    assert sorted(m.task for m in broker.drain() if m.task != PROBE) == [FETCH_ALL, INDEX_ALL]
    submission = Submission.objects.get(pk=product_id)
    assert submission.sends == 1
    assert submission.claimed_at < submission.sent_at  # waiting for the indexing worker


@pytest.mark.django_db
def test_a_dropped_message_is_sent_again_once_a_probe_published_after_it_came_back(
    client, broker, settings, django_capture_on_commit_callbacks
):
    """RabbitMQ takes a message it cannot route (right after a restart, before its queues are
    back) and drops it. Once a probe published after it has come back through the queues, the
    queue has moved past it: it is sent again then, not only when its send's deadline (here
    ten minutes) has passed."""
    settings.CATALOGUE_REDRIVE_AFTER = 600
    with django_capture_on_commit_callbacks(execute=True):
        product_id = post(client, GOOD).json()["id"]
    broker.drain()  # dropped
    earlier = timedelta(seconds=40)
    Submission.objects.filter(pk=product_id).update(
        accepted_at=F("accepted_at") - earlier,
        sent_at=F("sent_at") - earlier,
        redrive_at=F("redrive_at") - earlier,
    )
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    consume_probes(broker)
    # A probe just consumed does not count yet: a message delivered before it may still be
    # held by a worker about to start it.
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    consume_probes(broker, aged=timedelta(seconds=91))

    assert tasks.redrive_submissions.run() == {"redriven": 1, "batches": 0}
    [again] = sent(broker.drain())
    submission = Submission.objects.get(pk=product_id)
    assert again.args[0] == submission.payload
    assert submission.sends == 2
    assert submission.redrive_at > timezone.now()
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}


@pytest.mark.django_db
def test_a_submission_workers_hold_is_not_sent_again_until_their_claim_runs_out(
    client, broker, fake_es, store, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """In flight: the insert was sent three minutes ago and taken just now, with MongoDB down,
    so the worker holds its retry while the indexing it queued runs. Its send's deadline has
    passed, but a worker may hold a task that long (time limit plus the longest retry
    countdown): it is not sent again until that lease has run out from the last claim, and
    then it is, as an insert since its history is missing."""
    with django_capture_on_commit_callbacks(execute=True):
        product_id = post(client, GOOD).json()["id"]
    [first] = broker.drain()
    three_minutes_ago = timezone.now() - timedelta(minutes=3)
    Submission.objects.filter(pk=product_id).update(
        accepted_at=three_minutes_ago,
        sent_at=three_minutes_ago,
        redrive_at=three_minutes_ago + timedelta(seconds=120),
    )

    def mongodb_down(*args):
        raise tasks.PyMongoError("no servers")

    monkeypatch.setattr(store, "save_submissions", mongodb_down)
    with pytest.raises(tasks.PyMongoError), django_capture_on_commit_callbacks(execute=True):
        tasks.insert_product.run(*first.args)
    [indexing] = sent(broker.drain(), INDEX_ALL)
    tasks.index_products.run(*indexing.args)
    probes_came_back(sent=timezone.now())
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}
    assert sent(broker.drain()) == []

    # The lease passes with no claim since: the worker died and the retry is gone.
    lease = timedelta(seconds=settings.CATALOGUE_CLAIM_LEASE + 1)
    Submission.objects.filter(pk=product_id).update(
        claimed_at=F("claimed_at") - lease,
        sent_at=F("sent_at") - lease,
        redrive_at=F("redrive_at") - lease,
    )
    assert tasks.redrive_submissions.run() == {"redriven": 1, "batches": 0}
    [again] = sent(broker.drain())
    assert again.args == first.args


@pytest.mark.django_db
def test_old_probes_are_pruned(broker):
    probes_came_back(sent=timezone.now() - timedelta(hours=2))
    QueueProbe.objects.update(ran_at=timezone.now() - timedelta(hours=2))
    tasks.redrive_submissions.run()
    assert QueueProbe.objects.count() == 0
    published = sent(broker.drain(), PROBE)
    assert sorted(m.queue for m in published) == sorted(tasks.OUTBOX_QUEUES)


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
    lost_in_the_broker(waiting.pk, no_history.pk)
    assert tasks.redrive_submissions.run()["redriven"] == 2
    messages = [m for m in broker.drain() if m.task != PROBE]
    sent = {(m.task, m.args[0] if m.task == INDEX else m.args[0]["id"]) for m in messages}
    assert sent == {(INDEX, str(waiting.pk)), (INSERT, str(no_history.pk))}
    waiting.refresh_from_db()
    assert waiting.sends == 2


@pytest.mark.django_db
def test_a_duplicate_insert_of_a_stored_submission_queues_nothing(
    broker, fake_es, store, django_capture_on_commit_callbacks
):
    """Its indexing was queued by the insert that stored it and is the outbox's to re-drive if
    lost: a copy queuing it again (or the image fetch) only multiplied a backlog."""
    submission = recorded()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.insert_product.run(submission.payload)
    assert sorted(m.task for m in broker.drain()) == [FETCH_ALL, INDEX_ALL]
    assert tasks.insert_product.run(submission.payload) == {
        "id": str(submission.pk),
        "created": False,
    }
    assert broker.drain() == []
    tasks.index_products.run([str(submission.pk)])
    tasks.insert_product.run(submission.payload)
    assert broker.drain() == []
    assert Product.objects.filter(pk=submission.pk).count() == 1


@pytest.mark.django_db
def test_the_redrive_sends_at_most_a_batch_per_run(broker, settings):
    settings.CATALOGUE_REDRIVE_BATCH = 2
    submissions = [recorded() for _ in range(3)]
    lost_in_the_broker(*(s.pk for s in submissions))
    assert tasks.redrive_submissions.run()["redriven"] == 2
    assert tasks.redrive_submissions.run()["redriven"] == 1
    assert len(sent(broker.drain())) == 3


@pytest.mark.django_db
def test_a_publish_that_fails_during_the_redrive_leaves_the_submission_due(broker, monkeypatch):
    submission = recorded()
    lost_in_the_broker(submission.pk)

    def refuse(*args, **kwargs):
        raise BrokerUnavailable("connection refused")

    monkeypatch.setattr(tasks.insert_product, "apply_async", refuse)
    with pytest.raises(BrokerUnavailable):
        tasks.redrive_submissions.run()
    submission.refresh_from_db()
    assert submission.sends == 1
    drained_before = QueueProbe.drained_before(tasks.OUTBOX_QUEUES, timezone.now())
    assert list(Submission.objects.to_send_again(timezone.now(), drained_before)) == [submission]


@pytest.mark.django_db
def test_a_redriven_submission_racing_its_first_delivery_stores_indexes_and_records_once(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    """The first message was slow, not lost (say a worker took it from the queue and was killed
    before it started, and the broker gave it back): it and the re-driven one both run, and so
    does the indexing the first of them enqueues."""
    with django_capture_on_commit_callbacks(execute=True):
        product_id = post(client, GOOD).json()["id"]
    [first] = broker.drain()
    lost_in_the_broker(product_id)
    tasks.redrive_submissions.run()
    [again] = sent(broker.drain())
    assert again.args == first.args

    for message in (first, again, first):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.insert_product.run(*message.args)
    # The first to run stored it with its history and queued its indexing: the copies find
    # that and queue nothing.
    [indexing] = [m for m in broker.drain() if m.task == INDEX_ALL]
    tasks.index_products.run(*indexing.args)

    assert Product.objects.filter(id=product_id).count() == 1
    assert Event.objects.filter(product_id=product_id, kind="created").count() == 1
    assert [[d for d, _ in docs] for _, docs in fake_es.called("index_documents")] == [[product_id]]
    assert list(fake_es.documents) == [product_id]
    [history] = store.history(product_id)
    assert history["kind"] == "submission"
    assert Submission.objects.get(pk=product_id).done_at is not None
    lost_in_the_broker(product_id)
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}


@pytest.mark.django_db
def test_a_batch_whose_message_was_lost_gets_its_summary_from_the_redrive(
    client, broker, fake_es, store, django_capture_on_commit_callbacks
):
    """The batch's message was dropped and its members re-driven one by one, outside the
    batch: once every member is done and the deadline has passed, the re-drive sends the
    summary itself, once."""
    with django_capture_on_commit_callbacks(execute=True):
        body = post(client, {"products": [GOOD, GOOD]}, "/api/products/batch").json()
    batch_id = body["batch_id"]
    [members] = [message.args[0] for message in broker.drain()]
    for payload in members:
        tasks.insert_product.run(payload)
        tasks.index_product.run(payload["id"])
    broker.drain()
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 0}  # not done long

    Submission.objects.update(done_at=timezone.now() - timedelta(seconds=121))
    assert tasks.redrive_submissions.run() == {"redriven": 0, "batches": 1}
    [summary] = sent(broker.drain(), "catalogue.tasks.summarise_batch")
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
