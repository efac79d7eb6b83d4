"""A small typed client for the Elasticsearch 5.x REST API over `requests`.

The official `elasticsearch` 5.x client (last release 5.5.3, 2018) does import on Python 3.12 and
3.13, but it is unmaintained and untested against urllib3 2; this layer covers the few calls the
app makes with explicit timeouts and two exception types the callers act on.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import requests

DOC_TYPE = "product"  # Elasticsearch 5 still needs a mapping type.
_SERVER_ERROR = 500
# Statuses of a bulk item that a later attempt may get through: too many requests, 5xx.
RETRY_LATER = frozenset({429, 500, 502, 503, 504})


class SearchError(Exception):
    """Elasticsearch answered with a client error (a bug in a request, not an outage)."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(f"Elasticsearch answered {status}: {body}")
        self.status = status
        self.body = body


class SearchUnavailable(Exception):
    """Elasticsearch cannot be reached or answered with a server error: retry later."""


class Hit(TypedDict):
    id: str
    score: float | None
    source: dict[str, Any]


class SearchResult(TypedDict):
    total: int
    hits: list[Hit]
    suggest: dict[str, Any]
    aggregations: dict[str, Any]


class ElasticsearchClient:
    def __init__(
        self, base_url: str, timeout: float = 3.0, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    # -- transport ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        params: Mapping[str, str] | None = None,
        ndjson: str | None = None,
        allow_404: bool = False,
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        data: str | None = None
        if ndjson is not None:
            headers["Content-Type"] = "application/x-ndjson"
            data = ndjson
        elif body is not None:
            data = json.dumps(body)
        try:
            response = self.session.request(
                method,
                f"{self.base_url}/{path.lstrip('/')}",
                data=data,
                params=params,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise SearchUnavailable(f"{method} {path}: {exc}") from exc
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = {"raw": response.text[:500]}
        if response.status_code >= _SERVER_ERROR:
            raise SearchUnavailable(f"{method} {path}: {response.status_code} {payload}")
        if response.status_code == requests.codes.not_found and allow_404:
            return {"found": False, "status": 404, **payload}
        if response.status_code >= requests.codes.bad_request:
            raise SearchError(response.status_code, payload)
        return payload

    # -- documents ------------------------------------------------------------------------------
    def index_document(self, index: str, doc_id: str, document: Mapping[str, Any]) -> bool:
        """Index a document; True when it is new to the index, False when it replaced one."""
        payload = self.request("PUT", f"{index}/{DOC_TYPE}/{doc_id}", document)
        return payload.get("result") == "created"

    def delete_document(self, index: str, doc_id: str) -> None:
        self.request("DELETE", f"{index}/{DOC_TYPE}/{doc_id}", allow_404=True)

    def multi_get(self, index: str, ids: list[str], fields: list[str]) -> dict[str, dict | None]:
        """Map each id to its `_source` restricted to `fields`, or None when missing."""
        payload = self.request(
            "POST", f"{index}/{DOC_TYPE}/_mget", {"ids": ids}, params={"_source": ",".join(fields)}
        )
        return {
            doc["_id"]: (doc.get("_source", {}) if doc.get("found") else None)
            for doc in payload.get("docs", [])
        }

    def bulk_index(self, index: str, documents: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Index documents in one _bulk request; the number sent."""
        documents = list(documents)
        self._bulk(index, documents)
        return len(documents)

    def index_documents(
        self, index: str, documents: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> int:
        """Index documents in one _bulk request; the number new to the index."""
        return sum(1 for item in self._bulk(index, documents) if item.get("result") == "created")

    def _bulk(
        self, index: str, documents: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        lines: list[str] = []
        for doc_id, document in documents:
            lines.append(json.dumps({"index": {"_index": index, "_type": DOC_TYPE, "_id": doc_id}}))
            lines.append(json.dumps(document))
        if not lines:
            return []
        payload = self.request("POST", "_bulk", ndjson="\n".join(lines) + "\n")
        items = [item["index"] for item in payload.get("items", [])]
        if payload.get("errors"):
            failed = [item for item in items if item.get("error")]
            # A full bulk queue (429) or a shard not ready (5xx) passes: retry the request.
            if all(item.get("status", 0) in RETRY_LATER for item in failed):
                raise SearchUnavailable(f"_bulk: {len(failed)} items refused: {failed[:3]}")
            raise SearchError(400, failed[:5])
        return items

    def search(self, index: str, body: Mapping[str, Any]) -> SearchResult:
        payload = self.request("POST", f"{index}/_search", body)
        hits = payload.get("hits", {})
        return {
            "total": int(hits.get("total", 0)),
            "hits": [
                {"id": hit["_id"], "score": hit.get("_score"), "source": hit.get("_source", {})}
                for hit in hits.get("hits", [])
            ],
            "suggest": payload.get("suggest", {}),
            "aggregations": payload.get("aggregations", {}),
        }

    # -- indices and aliases --------------------------------------------------------------------
    def create_index(self, index: str, definition: Mapping[str, Any]) -> None:
        self.request("PUT", index, definition)

    def delete_index(self, index: str) -> None:
        self.request("DELETE", index, allow_404=True)

    def index_exists(self, index: str) -> bool:
        payload = self.request("GET", index, allow_404=True)
        return payload.get("status") != requests.codes.not_found

    def refresh(self, index: str) -> None:
        self.request("POST", f"{index}/_refresh")

    def alias_targets(self, alias: str) -> list[str]:
        """The indices the alias points at; [] when there is no such alias."""
        payload = self.request("GET", f"_alias/{alias}", allow_404=True)
        if payload.get("status") == requests.codes.not_found:
            return []
        return sorted(name for name, value in payload.items() if isinstance(value, dict))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        """Apply alias actions atomically (POST /_aliases)."""
        self.request("POST", "_aliases", {"actions": actions})

    def cluster_health(self) -> dict[str, Any]:
        return self.request("GET", "_cluster/health")


# One HTTP session per process and thread, kept: a read reuses its thread's open connection
# to the search hosts' TLS proxy instead of a TLS handshake (with a client certificate) each
# time. Keyed by the process, so a forked worker never shares its parent's sockets, and by the
# TLS settings, so other settings get a session of their own.
_sessions = threading.local()


def _session() -> requests.Session:
    from django.conf import settings  # noqa: PLC0415

    key = (
        os.getpid(),
        settings.TLS_CA_FILE,
        settings.ELASTICSEARCH_CLIENT_CERT,
        settings.ELASTICSEARCH_CLIENT_KEY,
    )
    kept = getattr(_sessions, "kept", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    session = requests.Session()
    # Behind the search hosts' TLS proxy: the server checked against the internal CA, and this
    # host's own certificate presented, since the proxy admits no client without one.
    if settings.TLS_CA_FILE:
        session.verify = settings.TLS_CA_FILE
    if settings.ELASTICSEARCH_CLIENT_CERT:
        session.cert = (settings.ELASTICSEARCH_CLIENT_CERT, settings.ELASTICSEARCH_CLIENT_KEY)
    if kept is not None:
        kept[1].close()
    _sessions.kept = (key, session)
    return session


def get_client(timeout: float | None = None) -> ElasticsearchClient:
    from django.conf import settings  # noqa: PLC0415

    return ElasticsearchClient(
        settings.ELASTICSEARCH_URL,
        timeout=settings.ELASTICSEARCH_TIMEOUT if timeout is None else timeout,
        session=_session(),
    )
