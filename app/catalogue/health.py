"""Readiness checks: each dependency answered within a short timeout, all run in parallel.

A check is a callable taking the timeout in seconds and raising on failure. Which checks run is
the setting CATALOGUE_READINESS_CHECKS (name -> dotted path), so tests can inject their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils.module_loading import import_string

Check = Callable[[float], None]
ES_HEALTHY = frozenset({"green", "yellow"})


def check_postgresql(timeout: float) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # this runs in a pool thread: do not leave its connection open


def check_redis(timeout: float) -> None:
    from django_redis import get_redis_connection  # noqa: PLC0415

    get_redis_connection("default").ping()


def check_rabbitmq(timeout: float) -> None:
    from kombu import Connection  # noqa: PLC0415

    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=timeout, ssl=settings.CELERY_BROKER_USE_SSL
    ) as conn:
        conn.connect()


def check_elasticsearch(timeout: float) -> None:
    from .search.client import get_client  # noqa: PLC0415

    status = get_client(timeout=timeout).cluster_health().get("status")
    if status not in ES_HEALTHY:
        raise RuntimeError(f"cluster status {status}")


def check_mongodb(timeout: float) -> None:
    from .documents import get_store  # noqa: PLC0415

    get_store().ping()


def configured_checks() -> dict[str, Check]:
    return {name: import_string(path) for name, path in settings.CATALOGUE_READINESS_CHECKS.items()}


def _timed(check: Check, timeout: float) -> float:
    started = time.monotonic()
    check(timeout)
    return time.monotonic() - started


def run_checks(checks: dict[str, Check], timeout: float) -> tuple[bool, dict[str, Any]]:
    """Run every check at once; one that raises or outlasts `timeout` fails."""
    results: dict[str, Any] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="readyz")
    try:
        futures = {name: pool.submit(_timed, check, timeout) for name, check in checks.items()}
        deadline = time.monotonic() + timeout
        for name, future in futures.items():
            try:
                elapsed = future.result(timeout=max(0.0, deadline - time.monotonic()))
                results[name] = {"ok": True, "ms": round(elapsed * 1000, 1)}
            except FutureTimeout:
                results[name] = {"ok": False, "error": f"no answer within {timeout:g} s"}
            except Exception as exc:  # any failure makes the check fail
                results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return all(r["ok"] for r in results.values()), results
