"""Unit-test fixtures: an in-memory broker to read what was enqueued, a fake Elasticsearch
boundary that records request bodies, and a fresh in-memory document store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from catalogue import documents, tasks
from catalogue_site.celery import app as celery_app

QUEUES = ("default", "indexing", "slow")


@dataclass
class Published:
    queue: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    delivery_mode: int | None
    headers: dict[str, Any] = field(default_factory=dict)


class Broker:
    """Reads the messages Celery published to the in-memory transport (settings.test)."""

    def drain(self) -> list[Published]:
        messages = []
        with celery_app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in QUEUES:
                while (message := channel.basic_get(queue, no_ack=True)) is not None:
                    args, kwargs, embed = message.decode()
                    messages.append(
                        Published(
                            queue,
                            message.headers["task"],
                            args,
                            kwargs,
                            embed,
                            message.properties.get("delivery_mode"),
                            dict(message.headers),
                        )
                    )
        return messages


@pytest.fixture
def broker() -> Broker:
    spy = Broker()
    spy.drain()  # start empty
    return spy


@dataclass
class FakeElasticsearch:
    """Stands in for ElasticsearchClient: records calls, answers from queued responses."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: bool = False

    def _call(self, name: str, *args: Any) -> None:
        from catalogue.search.client import SearchUnavailable  # noqa: PLC0415

        self.calls.append((name, args))
        if self.down:
            raise SearchUnavailable("connection refused")

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        self._call("search", index, body)
        answer = self.responses.pop(0) if self.responses else {}
        return {"total": 0, "hits": [], "suggest": {}, "aggregations": {}, **answer}

    def bodies(self) -> list[dict[str, Any]]:
        return [args[1] for name, args in self.calls if name == "search"]

    def index_document(self, index: str, doc_id: str, document: dict[str, Any]) -> bool:
        self._call("index_document", index, doc_id, document)
        created = doc_id not in self.documents
        self.documents[doc_id] = document
        return created

    def delete_document(self, index: str, doc_id: str) -> None:
        self._call("delete_document", index, doc_id)
        self.documents.pop(doc_id, None)

    def alias_targets(self, alias: str) -> list[str]:
        self._call("alias_targets", alias)
        return list(self.aliases.get(alias, []))

    def create_index(self, index: str, definition: dict[str, Any]) -> None:
        self._call("create_index", index, definition)

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        self._call("update_aliases", actions)
        for action in actions:
            for verb, target in action.items():
                names = self.aliases.setdefault(target["alias"], [])
                if verb == "add":
                    names.append(target["index"])
                else:
                    names.remove(target["index"])

    def index_documents(self, index: str, docs: Any) -> int:
        docs = list(docs)
        self._call("index_documents", index, docs)
        created = sum(1 for doc_id, _ in docs if doc_id not in self.documents)
        self.documents.update(dict(docs))
        return created

    def bulk_index(self, index: str, docs: Any) -> int:
        docs = list(docs)
        self._call("bulk_index", index, docs)
        self.documents.update(dict(docs))
        return len(docs)

    def refresh(self, index: str) -> None:
        self._call("refresh", index)

    def index_exists(self, index: str) -> bool:
        self._call("index_exists", index)
        return False

    def delete_index(self, index: str) -> None:
        self._call("delete_index", index)

    def multi_get(self, index: str, ids: list[str], fields: list[str]) -> dict[str, Any]:
        self._call("multi_get", index, ids, fields)
        return {
            doc_id: (
                {f: self.documents[doc_id].get(f) for f in fields}
                if doc_id in self.documents
                else None
            )
            for doc_id in ids
        }

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for call, args in self.calls if call == name]


@pytest.fixture
def fake_es(monkeypatch: pytest.MonkeyPatch) -> FakeElasticsearch:
    fake = FakeElasticsearch()

    def get_client(timeout: float | None = None) -> FakeElasticsearch:
        return fake

    for module in ("catalogue.views", "catalogue.tasks", "catalogue.management.commands.reindex"):
        monkeypatch.setattr(f"{module}.get_client", get_client)
    tasks._aliases_ready.clear()
    return fake


@pytest.fixture
def client():
    """Django's test client with the API token every API write needs."""
    from django.conf import settings  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    return Client(HTTP_AUTHORIZATION=f"Bearer {settings.API_TEST_TOKEN}")


@pytest.fixture
def anonymous():
    """A client without a token."""
    from django.test import Client  # noqa: PLC0415

    return Client()


MEMBER_PASSWORD = "a-long-unit-test-passphrase"


@pytest.fixture
def member(db):
    """A client signed in as an account the operator made: the page's form needs one."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    get_user_model().objects.create_user("editor", password=MEMBER_PASSWORD)
    signed_in = Client()
    assert signed_in.login(username="editor", password=MEMBER_PASSWORD)
    return signed_in


@pytest.fixture
def store() -> documents.MemoryStore:
    documents.get_store.cache_clear()
    return documents.get_store()


@pytest.fixture(autouse=True)
def _clean_cache() -> None:
    from django.core.cache import cache  # noqa: PLC0415

    cache.clear()


@dataclass
class Clock:
    now: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The autocomplete cache's clock, moved by hand, in a process that saw no generation yet."""
    fake = Clock()
    monkeypatch.setattr("catalogue.autocomplete_cache.monotonic", lambda: fake.now)
    monkeypatch.setattr("catalogue.autocomplete_cache._first_seen", ("", 0.0))
    return fake
