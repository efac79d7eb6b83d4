"""Readiness checks: each dependency answered within a short timeout, all run in parallel.

A check is a callable taking the timeout in seconds and raising on failure. Which checks run is
the setting CATALOGUE_READINESS_CHECKS (name -> dotted path), so tests can inject their own.

The checks reuse connections: each runs in its own long-lived thread (so PostgreSQL's check
keeps one connection per process), RabbitMQ's borrows from Celery's connection pool, Redis and
MongoDB use their clients' pools, Elasticsearch one kept session. A round's answer serves every
/readyz for CATALOGUE_READINESS_CACHE seconds, so a burst of probes costs one round. A failure
is reported by its exception's class only: the text can name internal hosts; it is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils.module_loading import import_string

log = logging.getLogger(__name__)
Check = Callable[[float], None]
ES_HEALTHY = frozenset({"green", "yellow"})


def check_postgresql(timeout: float) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # The check's own thread keeps its connection for the next round, as a request's does.
        connection.close_if_unusable_or_obsolete()


def check_redis(timeout: float) -> None:
    from django_redis import get_redis_connection  # noqa: PLC0415

    get_redis_connection("default").ping()


def check_rabbitmq(timeout: float) -> None:
    from catalogue_site.celery import app  # noqa: PLC0415

    with app.pool.acquire(block=True, timeout=timeout) as conn:
        try:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            # A round trip: a kept connection may have died since it was last used. amq.direct
            # is in every vhost, so the answer does not wait for a worker to declare its queues
            # (a new host's release is checked before any worker runs).
            conn.default_channel.exchange_declare("amq.direct", "direct", passive=True)
        except Exception:
            conn.collect()  # the pool opens a fresh one next time
            raise


def check_elasticsearch(timeout: float) -> None:
    status = _search_client(timeout).cluster_health().get("status")
    if status not in ES_HEALTHY:
        raise RuntimeError(f"cluster status {status}")


_clients: dict[float, Any] = {}


def _search_client(timeout: float) -> Any:
    from .search.client import get_client  # noqa: PLC0415

    if timeout not in _clients:
        _clients[timeout] = get_client(timeout=timeout)
    return _clients[timeout]


def check_mongodb(timeout: float) -> None:
    from .documents import get_store  # noqa: PLC0415

    get_store().ping()


def configured_checks() -> dict[str, Check]:
    return {name: import_string(path) for name, path in settings.CATALOGUE_READINESS_CHECKS.items()}


def _timed(check: Check, timeout: float) -> float:
    started = time.monotonic()
    check(timeout)
    return time.monotonic() - started


_executors: dict[tuple[str, Check], ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(name: str, check: Check) -> ThreadPoolExecutor:
    """One thread per check, kept: its connections are reused, and a check that hangs holds
    up only its own next round (which then fails on time)."""
    with _executors_lock:
        if (name, check) not in _executors:
            _executors[(name, check)] = ThreadPoolExecutor(1, thread_name_prefix=f"readyz-{name}")
        return _executors[(name, check)]


def run_checks(checks: dict[str, Check], timeout: float) -> tuple[bool, dict[str, Any]]:
    """Run every check at once; one that raises or outlasts `timeout` fails."""
    results: dict[str, Any] = {}
    futures = {
        name: _executor(name, check).submit(_timed, check, timeout)
        for name, check in checks.items()
    }
    deadline = time.monotonic() + timeout
    for name, future in futures.items():
        try:
            elapsed = future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[name] = {"ok": True, "ms": round(elapsed * 1000, 1)}
        except FutureTimeout:
            future.cancel()
            results[name] = {"ok": False, "error": f"no answer within {timeout:g} s"}
        except Exception as exc:  # any failure makes the check fail
            log.warning("readiness check %s failed: %s", name, exc)
            results[name] = {"ok": False, "error": type(exc).__name__}
    return all(r["ok"] for r in results.values()), results


_last: tuple[float, tuple[bool, dict[str, Any]]] = (float("-inf"), (False, {}))
_round_lock = threading.Lock()


def readiness() -> tuple[bool, dict[str, Any]]:
    """The configured checks' answer, at most CATALOGUE_READINESS_CACHE seconds old; callers
    arriving during a round wait for it instead of starting their own."""
    global _last  # noqa: PLW0603 - one small record per process, shared by its threads
    with _round_lock:
        if time.monotonic() - _last[0] < settings.CATALOGUE_READINESS_CACHE:
            return _last[1]
        answer = run_checks(configured_checks(), settings.CATALOGUE_READINESS_TIMEOUT)
        _last = (time.monotonic(), answer)
        return answer
