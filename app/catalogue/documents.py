"""The audit trail in MongoDB: raw submissions, image-fetch results and batch summaries.

Views and tasks talk to `get_store()`, which returns the class named by the setting
CATALOGUE_DOCUMENT_STORE: MongoStore in production, MemoryStore in unit tests.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

SUBMISSION = "submission"
IMAGE_FETCH = "image_fetch"
DUPLICATE_KEY = 11000  # MongoDB's error code: a document with that _id is already there


class DocumentStore(Protocol):
    def save_submission(self, product_id: str, document: dict[str, Any]) -> None: ...

    def save_submissions(self, documents: dict[str, dict[str, Any]]) -> None: ...

    def save_image_fetch(self, product_id: str, attempt: int, document: dict[str, Any]) -> None: ...

    def history(self, product_id: str) -> list[dict[str, Any]]: ...

    def save_batch(self, batch_id: str, document: dict[str, Any]) -> None: ...

    def get_batch(self, batch_id: str) -> dict[str, Any] | None: ...

    def ping(self) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _submission(product_id: str, document: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"product_id": product_id, "kind": SUBMISSION, "at": at, "data": document}


class MongoStore:
    """Collections `history` (one document per event of a product) and `batches`.

    Document ids are derived from the product id (and attempt), so a redelivered task rewrites
    the same document instead of adding a second one.
    """

    def __init__(self) -> None:
        from pymongo import MongoClient  # noqa: PLC0415

        kwargs: dict[str, Any] = {
            "host": settings.MONGODB_HOST,
            "port": settings.MONGODB_PORT,
            "serverSelectionTimeoutMS": settings.MONGODB_TIMEOUT_MS,
            "connectTimeoutMS": settings.MONGODB_TIMEOUT_MS,
            "socketTimeoutMS": settings.MONGODB_TIMEOUT_MS * 5,
            "tz_aware": True,
        }
        if settings.MONGODB_TLS:
            # The server's certificate checked against the internal CA and MONGODB_HOST.
            kwargs |= {"tls": True, "tlsCAFile": settings.TLS_CA_FILE or None}
        if settings.MONGODB_USER:
            kwargs |= {
                "username": settings.MONGODB_USER,
                "password": settings.MONGODB_PASSWORD,
                "authSource": settings.MONGODB_AUTH_SOURCE,
            }
        self.client = MongoClient(**kwargs)
        self.db = self.client[settings.MONGODB_DB]
        self._indexed = False

    def _history(self):
        collection = self.db["history"]
        if not self._indexed:
            collection.create_index([("product_id", 1), ("at", 1)])
            self._indexed = True
        return collection

    def save_submission(self, product_id: str, document: dict[str, Any]) -> None:
        self._history().replace_one(
            {"_id": f"{product_id}:{SUBMISSION}"},
            _submission(product_id, document, _now()),
            upsert=True,
        )

    def save_submissions(self, documents: dict[str, dict[str, Any]]) -> None:
        """A batch's submission documents (product id -> submission) in one insert_many. The
        ids are derived, so a batch sent again finds its documents there and adds none: those
        duplicate-key errors are the redelivery's, any other error is raised."""
        from pymongo.errors import BulkWriteError  # noqa: PLC0415

        at = _now()
        batch = [
            {"_id": f"{product_id}:{SUBMISSION}", **_submission(product_id, document, at)}
            for product_id, document in documents.items()
        ]
        if not batch:
            return
        try:
            self._history().insert_many(batch, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(
                error.get("code") != DUPLICATE_KEY for error in errors
            ):
                raise

    def save_image_fetch(self, product_id: str, attempt: int, document: dict[str, Any]) -> None:
        self._history().replace_one(
            {"_id": f"{product_id}:{IMAGE_FETCH}:{attempt}"},
            {
                "product_id": product_id,
                "kind": IMAGE_FETCH,
                "attempt": attempt,
                "at": _now(),
                "data": document,
            },
            upsert=True,
        )

    def history(self, product_id: str) -> list[dict[str, Any]]:
        cursor = self._history().find({"product_id": product_id}, {"_id": 0}).sort("at", 1)
        return [dict(doc, at=doc["at"].isoformat()) for doc in cursor]

    def save_batch(self, batch_id: str, document: dict[str, Any]) -> None:
        self.db["batches"].replace_one({"_id": batch_id}, {**document, "at": _now()}, upsert=True)

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        doc = self.db["batches"].find_one({"_id": batch_id}, {"_id": 0})
        return None if doc is None else dict(doc, at=doc["at"].isoformat())

    def ping(self) -> None:
        self.client.admin.command("ping")


class MemoryStore:
    """The same interface in process memory, for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.documents: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        # (operation, documents) per write of submissions, as MongoDB would see the requests.
        self.submission_writes: list[tuple[str, int]] = []

    def _put(self, key: str, document: dict[str, Any]) -> None:
        with self._lock:
            self.documents[key] = document

    def save_submission(self, product_id: str, document: dict[str, Any]) -> None:
        self.submission_writes.append(("replace_one", 1))
        self._put(f"{product_id}:{SUBMISSION}", _submission(product_id, document, _now()))

    def save_submissions(self, documents: dict[str, dict[str, Any]]) -> None:
        if not documents:
            return
        self.submission_writes.append(("insert_many", len(documents)))
        at = _now()
        with self._lock:
            for product_id, document in documents.items():
                key = f"{product_id}:{SUBMISSION}"
                self.documents.setdefault(key, _submission(product_id, document, at))

    def save_image_fetch(self, product_id: str, attempt: int, document: dict[str, Any]) -> None:
        self._put(
            f"{product_id}:{IMAGE_FETCH}:{attempt}",
            {
                "product_id": product_id,
                "kind": IMAGE_FETCH,
                "attempt": attempt,
                "at": _now(),
                "data": document,
            },
        )

    def history(self, product_id: str) -> list[dict[str, Any]]:
        docs = [d for d in self.documents.values() if d["product_id"] == product_id]
        return [dict(d, at=d["at"].isoformat()) for d in sorted(docs, key=lambda d: d["at"])]

    def save_batch(self, batch_id: str, document: dict[str, Any]) -> None:
        self.batches[batch_id] = {**document, "at": _now()}

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        doc = self.batches.get(batch_id)
        return None if doc is None else dict(doc, at=doc["at"].isoformat())

    def ping(self) -> None:
        return None


@cache
def get_store() -> DocumentStore:
    """One store per process (MongoClient pools its connections and is thread-safe)."""
    return import_string(settings.CATALOGUE_DOCUMENT_STORE)()
