"""Products (PostgreSQL, the primary store), the submission outbox, and the events table the
postgresql role partitions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Count, F, Max, Q
from django.db.models.functions import Greatest, Now
from django.utils import timezone

TITLE_MAX_LENGTH = 200
IMAGE_URL_MAX_LENGTH = 2048
DESCRIPTION_MAX_LENGTH = 5000


class ImageStatus(models.TextChoices):
    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"


class Product(models.Model):
    # Chosen by the web process when the request is accepted, so a redelivered insert task finds
    # the row it already wrote instead of creating a second one.
    id = models.UUIDField(primary_key=True, editable=False)
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    description = models.TextField(blank=True, default="", max_length=DESCRIPTION_MAX_LENGTH)
    image_url = models.CharField(max_length=IMAGE_URL_MAX_LENGTH)
    popularity = models.PositiveIntegerField(default=0)
    submitted_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    image_status = models.CharField(
        max_length=16, choices=ImageStatus.choices, default=ImageStatus.PENDING
    )
    # Outcome of the last image fetch: ok, http_error, unreachable, refused, invalid.
    image_outcome = models.CharField(max_length=32, blank=True, default="")
    image_content_type = models.CharField(max_length=255, blank=True, default="")
    image_size = models.BigIntegerField(null=True, blank=True)
    image_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = (models.Index(fields=("-created_at",), name="catalogue_product_created"),)

    def __str__(self) -> str:
        return self.title

    def search_document(self) -> dict[str, object]:
        """The Elasticsearch document for this product (see catalogue.search.mappings)."""
        return {
            "title": self.title,
            "description": self.description,
            "image_url": self.image_url,
            "popularity": self.popularity,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "image_status": self.image_status,
            "image_outcome": self.image_outcome or "pending",
        }


class EventKind(models.TextChoices):
    CREATED = "created"
    INDEXED = "indexed"
    VIEWED = "viewed"


class Event(models.Model):
    """One row per created/indexed/viewed event, in the table `catalogue_event`.

    In production the postgresql role owns this table: it creates it and its monthly
    partitions by trigger on `created_at` (see app/README.md), so Django never creates or alters
    it (managed = False). The primary key is a UUID chosen here, because a row routed to a
    partition by a BEFORE INSERT trigger returns nothing to `INSERT ... RETURNING`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    product_id = models.UUIDField(db_index=True)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    created_at = models.DateTimeField(default=timezone.now)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "catalogue_event"
        managed = getattr(settings, "CATALOGUE_EVENTS_TABLE_MANAGED", False)
        ordering = ("created_at",)

    def __str__(self) -> str:
        return f"{self.kind} {self.product_id}"

    @classmethod
    def record(cls, product_id: uuid.UUID | str, kind: str, **payload: object) -> Event:
        return cls.objects.create(product_id=product_id, kind=kind, payload=payload)


class SubmissionQuerySet(models.QuerySet):
    def pending(self) -> SubmissionQuerySet:
        """Accepted and not done yet: the outbox still owes them a step."""
        return self.filter(done_at__isnull=True)

    def to_send_again(self, now: datetime, drained_before: datetime | None) -> SubmissionQuerySet:
        """What the re-drive sends again: not done, and either taken by a worker that has not
        finished it by its deadline (the task died or gave up), or never taken although every
        message published before `drained_before` has since left the queues (the broker dropped
        it, or its publish failed). A message merely waiting in a backlog is neither."""
        stuck = Q(claimed_at__gte=F("sent_at"), redrive_at__lte=now)
        unclaimed = Q(claimed_at__isnull=True) | Q(claimed_at__lt=F("sent_at"))
        lost = unclaimed & Q(sent_at__lt=drained_before) if drained_before else Q(pk__in=())
        return self.filter(stuck | lost, done_at__isnull=True).order_by("sent_at")

    def to_take(self, product_id: str, limit: int) -> models.QuerySet:
        """Single submissions (batch members are their batch's) whose insert message is waiting
        in a queue, oldest sent first, as (pk, payload): not stored, and not claimed since that
        send, so not being inserted by another worker. Locked for the transaction; rows another
        worker is taking at the same moment are skipped, not waited for."""
        return (
            self.select_for_update(skip_locked=True)
            .filter(batch_id__isnull=True, stored_at__isnull=True, done_at__isnull=True)
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=F("sent_at")))
            .exclude(pk=product_id)
            # sent_at: the pending rows' partial index (catalogue_submission_sent)
            .order_by("sent_at")
            .values_list("pk", "payload")[:limit]
        )

    def batches_to_summarise(self, done_before: datetime) -> models.QuerySet:
        """Ids of batches whose products are all done (the last before `done_before`) and whose
        summary was never recorded: their insert_batch was lost and the members re-driven
        one by one."""
        return (
            self.filter(batch_id__isnull=False, summarised_at__isnull=True)
            .values("batch_id")
            .annotate(pending=Count("pk", filter=Q(done_at__isnull=True)), last=Max("done_at"))
            .filter(pending=0, last__lte=done_before)
            .order_by()
            .values_list("batch_id", flat=True)
        )

    def prunable(self, done_before: datetime) -> SubmissionQuerySet:
        """Done before `done_before`; a batch's rows only once its summary is recorded."""
        return self.filter(done_at__lt=done_before).exclude(
            batch_id__isnull=False, summarised_at__isnull=True
        )


class Submission(models.Model):
    """The outbox: one row per accepted product, written in the request's own transaction before
    the API answers 202, so an accepted product survives a broker that drops the message.

    The row keeps the insert_product message as it was first sent; the tasks record each step
    (stored, history written, indexed) and the row is done once all three are. Until then the
    beat task `redrive_submissions` sends its work again when it is lost, and only then:

    - `sent_at` is when its latest message went out (the insert, then the indexing), and
      `claimed_at` when a worker last started on it. A message sent and not claimed is either
      waiting in a queue, however long the backlog, or lost. The re-drive tells the two apart
      with probes (QueueProbe): a probe published after the message and consumed since means
      the message has left the queue, so if nobody claimed it, it was dropped.
    - A claimed submission that is not done by `redrive_at` was taken by a task that died or
      gave up. A claim pushes `redrive_at` to at least CATALOGUE_CLAIM_LEASE ahead, longer than a
      worker may hold a task with its retries; each send sets it CATALOGUE_REDRIVE_AFTER ahead,
      doubling per send up to CATALOGUE_REDRIVE_BACKOFF_CAP, so a task that keeps failing is not
      sent again every lease.

    Done rows are pruned after CATALOGUE_SUBMISSION_RETENTION_DAYS.
    """

    STORED = "stored_at"
    HISTORY = "history_at"
    INDEXED = "indexed_at"
    STEPS = (STORED, HISTORY, INDEXED)

    # The product's id: the one the request chose and the message carries.
    id = models.UUIDField(primary_key=True, editable=False)
    batch_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField()
    accepted_at = models.DateTimeField(default=timezone.now)
    sends = models.PositiveIntegerField(default=1)
    redrive_at = models.DateTimeField()
    # The database's default too: rows the previous release writes during a deploy (it does not
    # know the column) are sent as they are accepted.
    sent_at = models.DateTimeField(default=timezone.now, db_default=Now())
    claimed_at = models.DateTimeField(null=True, blank=True)
    stored_at = models.DateTimeField(null=True, blank=True)
    history_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    # Batch members only: when the batch's summary was recorded.
    summarised_at = models.DateTimeField(null=True, blank=True)

    objects = SubmissionQuerySet.as_manager()

    class Meta:
        # Partial indexes: the beat's queries only ever look at the few rows not yet done.
        indexes = (
            models.Index(
                fields=("redrive_at",),
                condition=Q(done_at__isnull=True),
                name="catalogue_submission_due",
            ),
            models.Index(
                fields=("sent_at",),
                condition=Q(done_at__isnull=True),
                name="catalogue_submission_sent",
            ),
            models.Index(
                fields=("done_at",),
                condition=Q(done_at__isnull=False),
                name="catalogue_submission_done",
            ),
            models.Index(
                fields=("batch_id",),
                condition=Q(batch_id__isnull=False, summarised_at__isnull=True),
                name="catalogue_submission_batch",
            ),
        )

    def __str__(self) -> str:
        return f"submission {self.id}"

    @staticmethod
    def redrive_delay(sends: int) -> timedelta:
        """How long after its `sends`-th send a submission that is not done is sent again."""
        seconds = settings.CATALOGUE_REDRIVE_AFTER * 2 ** (sends - 1)
        return timedelta(seconds=min(settings.CATALOGUE_REDRIVE_BACKOFF_CAP, seconds))

    @classmethod
    def accepted(cls, payload: dict[str, Any], batch_id: str | None = None) -> Submission:
        now = timezone.now()
        return cls(
            id=payload["id"],
            batch_id=batch_id,
            payload=payload,
            accepted_at=now,
            sent_at=now,
            redrive_at=now + cls.redrive_delay(1),
        )

    @classmethod
    def sent_again(cls, pk: uuid.UUID | str, sends: int, now: datetime) -> None:
        """Record a re-drive: one more send, and a deadline twice as far (up to the cap)."""
        cls.objects.filter(pk=pk, done_at__isnull=True).update(
            sends=F("sends") + 1, sent_at=now, redrive_at=now + cls.redrive_delay(sends + 1)
        )

    @classmethod
    def claim(cls, product_ids: list[str]) -> None:
        """A worker starts on these submissions' messages (a retry claims again): from now
        their deadline runs from this claim, not from the send."""
        now = timezone.now()
        lease = now + timedelta(seconds=settings.CATALOGUE_CLAIM_LEASE)
        cls.objects.filter(pk__in=product_ids, done_at__isnull=True).update(
            claimed_at=now, redrive_at=Greatest(F("redrive_at"), lease)
        )

    @classmethod
    def take_singles(
        cls, product_id: str, limit: int, first_delivery: bool
    ) -> list[dict[str, Any]] | None:
        """Group commit, for insert_product: claim its own submission and take along up to
        `limit` others (SubmissionQuerySet.to_take), claimed too; returns their payloads (the
        messages as sent). None when its own is not this message's to work:

        - stored with its history: a copy ran before, or another insert took it along. Its
          indexing was queued by whoever stored it and is the outbox's to re-drive if lost.
        - taken by another insert (claimed since its send, or stored since) and this is the
          message's first delivery and first send: the taker is working it. Its own row's
          lock is waited for, so a taker storing it now is seen done. A taker that dies
          leaves it claimed: the re-drive sends it again once the lease runs out, and that
          copy (sends > 1) works it; one that fails hands it back (release_taken)."""
        with transaction.atomic():
            own = (
                cls.objects.select_for_update()
                .filter(pk=product_id)
                .values_list("stored_at", "history_at", "sends", "claimed_at", "sent_at")
                .first()
            )
            if own:
                stored, history, sends, claimed, sent = own
                taken_elsewhere = claimed is not None and (stored or claimed >= sent)
                if (stored and history) or (first_delivery and sends == 1 and taken_elsewhere):
                    return None
            taken = list(cls.objects.to_take(product_id, limit)) if limit > 0 else []
            cls.claim([product_id, *(pk for pk, _ in taken)])
        return [payload for _, payload in taken]

    @classmethod
    def release_taken(cls, product_ids: list[str]) -> None:
        """An insert that took these along failed before their history was written: their own
        messages work them when they come (see take_singles), as if never taken."""
        cls.objects.filter(pk__in=product_ids, history_at__isnull=True).update(claimed_at=None)

    @classmethod
    def forwarded(cls, product_ids: list[str]) -> None:
        """The claimed task has queued the next step's message (the indexing): the submission
        waits in a queue again, unclaimed, until a worker takes that message."""
        cls.objects.filter(pk__in=product_ids, done_at__isnull=True).update(sent_at=timezone.now())

    @classmethod
    def mark(cls, product_id: uuid.UUID | str, step: str) -> None:
        """Record that `step` is done for this product (see mark_all)."""
        cls.mark_all([product_id], step)

    @classmethod
    def mark_all(cls, product_ids: list[uuid.UUID | str], step: str) -> None:
        """Record that `step` is done for these products, and each whole submission once every
        step is. Repeating it changes nothing; a product without a submission row is left alone.

        A step's own check for completion runs after the step is written, so whichever step is
        written last sees the others and closes the submission. (`stored` is written inside the
        insert's transaction, but nothing else can happen before that commits: the history and
        the indexing need the product row.)"""
        now = timezone.now()
        rows = cls.objects.filter(pk__in=product_ids)
        if rows.filter(**{f"{step}__isnull": True}).update(**{step: now}):
            finished = {f"{name}__isnull": False for name in cls.STEPS}
            rows.filter(done_at__isnull=True, **finished).update(done_at=now)


class QueueProbe(models.Model):
    """A probe message the re-drive published to a queue at `sent_at`, consumed at `ran_at`.

    Queues hand out messages in the order they were published, so once a probe is consumed
    every message published to its queue before it has been delivered. A worker may hold a
    delivered message for up to a task's hard time limit before starting it (prefetch), so a
    probe counts only CELERY_TASK_TIME_LIMIT after it ran.

    Why probes rather than the queue's depth: a depth says how many messages wait, not whether
    one submission's is among them, and under steady load it is never zero, so a dropped
    message would wait for a quiet moment. A deadline from the send cannot tell either: a
    backlog may hold a message for any time. A probe is one more message in the same queue, so
    it moves exactly as fast as the backlog does, and it needs nothing from the broker but
    the order it already keeps (no management API, no credentials for it)."""

    queue = models.CharField(max_length=32)
    sent_at = models.DateTimeField()
    ran_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = (models.Index(fields=("queue", "ran_at"), name="catalogue_probe_ran"),)

    def __str__(self) -> str:
        return f"probe {self.queue} {self.sent_at}"

    @classmethod
    def drained_before(cls, queues: tuple[str, ...], now: datetime) -> datetime | None:
        """Every message published to all of `queues` before this time has been started by a
        worker, or lost; None until a probe has come back through each queue."""
        settled = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
        marks = [
            cls.objects.filter(queue=queue, ran_at__lte=settled).aggregate(m=Max("sent_at"))["m"]
            for queue in queues
        ]
        if None in marks:
            return None
        # A message's sent_at is written just before its publish (in the transaction that
        # commits first), so it may reach the queue a little after a probe sent later.
        return min(marks) - timedelta(seconds=settings.CATALOGUE_PUBLISH_SLACK)
