"""Products (PostgreSQL, the primary store) and the events table the postgresql role partitions."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
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
