"""Celery's own figures for Prometheus, per worker unit: the tasks finished, by task and state,
and how long each ran.

A worker runs its tasks in the processes of its pool. With PROMETHEUS_MULTIPROC_DIR set (the
celery role's unit gives each worker one, emptied at every start), each process writes its
samples there. The worker's main process adds them up every CATALOGUE_WORKER_METRICS_INTERVAL
seconds and writes them to CATALOGUE_WORKER_METRICS_FILE (a temporary file renamed over the
last), where the host's node exporter serves them (its textfile collector). So the worker
opens no listener: the node exporter's, already scraped by the monitor hosts and open to them
only, carries the figures.

Without CATALOGUE_WORKER_METRICS_FILE nothing is recorded or written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from celery import signals
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

PREFIX = "catalogue_celery_"
# From a cache hit (milliseconds) to an image fetch that waits out its timeouts (a minute).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

TASKS = Counter(
    f"{PREFIX}tasks",
    "Tasks this worker finished, by task name and final state (SUCCESS, FAILURE, RETRY...).",
    ["worker", "task", "state"],
    registry=None,  # read from the pool's files (below), not from this process's registry
)
RUNTIME = Histogram(
    f"{PREFIX}task_runtime_seconds",
    "Seconds each task ran in the worker's pool, by task name.",
    ["worker", "task"],
    buckets=RUNTIME_BUCKETS,
    registry=None,
)

_started: dict[str, float] = {}


def worker_name() -> str:
    return os.environ.get("CATALOGUE_WORKER_NAME", "worker")


def on_task_prerun(task_id: str | None = None, **_: object) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


def on_task_postrun(
    task_id: str | None = None, task=None, state: str | None = None, **_: object
) -> None:
    started = _started.pop(task_id, None) if task_id else None
    name = getattr(task, "name", None) or "unknown"
    TASKS.labels(worker_name(), name, state or "UNKNOWN").inc()
    if started is not None:
        RUNTIME.labels(worker_name(), name).observe(time.perf_counter() - started)


class _Ours:
    """The pool's samples added up, this module's families only (the app's others, if any
    process wrote some, are not the worker's to publish)."""

    def __init__(self, directory: str) -> None:
        self._all = CollectorRegistry()
        MultiProcessCollector(self._all, path=directory)

    def collect(self) -> Iterator[Metric]:
        for family in self._all.collect():
            if family.name.startswith(PREFIX):
                yield family


class TextfileWriter(threading.Thread):
    """Writes the worker's figures to `path` every `interval` seconds until stopped; stopping
    writes them once more and removes the file only when told to."""

    def __init__(self, path: Path, directory: str, interval: float) -> None:
        super().__init__(name="catalogue-worker-metrics", daemon=True)
        self.path = path
        self.registry = CollectorRegistry()
        self.registry.register(_Ours(directory))
        self.interval = interval
        self.stopped = threading.Event()

    def write(self) -> None:
        """As prometheus_client's write_to_textfile does (a temporary file beside it, renamed
        over it, so the collector never reads half a file), readable by all: the node exporter
        reads it as another user, and the worker's umask (0027) would hide it."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(generate_latest(self.registry))
            os.replace(temporary, self.path)
        except OSError:
            log.exception("cannot write the worker's metrics to %s", self.path)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.write()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=self.interval + 5)


_writer: list[TextfileWriter] = []


def on_worker_ready(**_: object) -> None:
    """In the worker's main process, once it consumes: start writing the file."""
    target = os.environ.get("CATALOGUE_WORKER_METRICS_FILE", "")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not target or not directory or _writer:
        return
    interval = float(os.environ.get("CATALOGUE_WORKER_METRICS_INTERVAL", "5"))
    writer = TextfileWriter(Path(target), directory, interval)
    writer.start()
    _writer.append(writer)


def on_worker_shutdown(**_: object) -> None:
    """A worker that stops takes its figures away (ServiceDown says it stopped); a restart
    starts its counters from zero, as Prometheus expects of a restarted process."""
    while _writer:
        writer = _writer.pop()
        writer.stop()
        writer.path.unlink(missing_ok=True)


def connect() -> bool:
    """Record and publish the worker's figures where the environment asks for them."""
    if not os.environ.get("CATALOGUE_WORKER_METRICS_FILE"):
        return False
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning("CATALOGUE_WORKER_METRICS_FILE is set without PROMETHEUS_MULTIPROC_DIR")
        return False
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
    return True
