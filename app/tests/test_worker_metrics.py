"""The Celery worker's own figures (catalogue/worker_metrics.py): tasks run through Celery's own
signals in processes of their own, as a worker's pool runs them, are counted by state and timed;
the main process's file holds their sum and only those families; a stopped worker removes it;
without the unit's settings nothing is connected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

APP_DIR = Path(__file__).resolve().parents[1]

# A pool process: a Celery app of its own, run eagerly, so that Celery itself sends the
# task_prerun and task_postrun signals around each task. argv: how many tasks succeed, fail.
POOL_PROCESS = """
import sys, time
from celery import Celery
from catalogue import worker_metrics

assert worker_metrics.connect()
app = Celery("pool", set_as_current=True)
app.conf.task_always_eager = True

@app.task(name="catalogue.tasks.sample")
def sample(fail):
    time.sleep(0.02)
    if fail:
        raise ValueError("planted failure")

good, bad = map(int, sys.argv[1:])
for _ in range(good):
    sample.delay(False)
for _ in range(bad):
    sample.delay(True)
"""


def environment(multiproc: Path, target: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "CATALOGUE_WORKER_METRICS_FILE": str(target),
        "CATALOGUE_WORKER_NAME": "default",
    }


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A Python process of its own, in the app's directory, as a worker's processes run."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        check=True,
        cwd=APP_DIR,
        capture_output=True,
        text=True,
    )


def run_pool(env: dict[str, str], good: int, bad: int) -> None:
    python(POOL_PROCESS, env, str(good), str(bad))


def test_the_pools_tasks_are_counted_by_state_and_timed_in_the_workers_file(tmp_path):
    multiproc, target = tmp_path / "multiproc", tmp_path / "textfile" / "default.prom"
    multiproc.mkdir()
    target.parent.mkdir()
    env = environment(multiproc, target)
    run_pool(env, good=3, bad=0)  # two pool processes, as a worker with concurrency 2 has
    run_pool(env, good=1, bad=2)
    # An app figure some process of the worker wrote beside them is not the worker's to publish.
    other = "from prometheus_client import Counter; Counter('django_other', 'x').inc()"
    python(other, env)
    # The main process: one write of the writer it starts once the worker is ready.
    # Under the unit's umask: the node exporter reads the file as another user.
    main = (
        "import os; os.umask(0o027); from catalogue import worker_metrics as m; "
        "m.on_worker_ready(); w = m._writer[0]; w.stop(); print(open(w.path).read())"
    )
    written = python(main, env).stdout
    found = samples(written)
    task = "catalogue.tasks.sample"
    ok = ("state", "SUCCESS"), ("task", task), ("worker", "default")
    failed = ("state", "FAILURE"), ("task", task), ("worker", "default")
    assert found[("catalogue_celery_tasks_total", ok)] == 4
    assert found[("catalogue_celery_tasks_total", failed)] == 2
    timed = ("task", task), ("worker", "default")
    assert found[("catalogue_celery_task_runtime_seconds_count", timed)] == 6
    # Each task slept 20 ms: the runtime is the task's, not zero.
    assert found[("catalogue_celery_task_runtime_seconds_sum", timed)] >= 6 * 0.02
    assert not [name for name, _ in found if not name.startswith("catalogue_celery_")]
    assert target.read_text() == written.removesuffix("\n")
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_a_stopped_worker_removes_its_file(tmp_path):
    multiproc, target = tmp_path / "multiproc", tmp_path / "default.prom"
    multiproc.mkdir()
    env = environment(multiproc, target)
    run_pool(env, good=1, bad=0)
    main = (
        "import os; from catalogue import worker_metrics as m; m.on_worker_ready(); "
        "m._writer[0].write(); assert os.path.exists(m._writer[0].path); m.on_worker_shutdown()"
    )
    python(main, env)
    assert not target.exists()


def test_nothing_is_connected_without_the_units_settings(tmp_path):
    probe = (
        "from celery import signals; from catalogue import worker_metrics as m; "
        "print(m.connect(), len(signals.task_postrun.receivers))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALOGUE_", "PROMETHEUS_"))}
    bare = python(probe, env)
    assert bare.stdout.split() == ["False", "0"]
    # A file asked for without the pool's directory: refused, with a warning, not half-done.
    half = {**env, "CATALOGUE_WORKER_METRICS_FILE": str(tmp_path / "x.prom")}
    refused = python(probe, half)
    assert refused.stdout.split() == ["False", "0"]
    assert "without PROMETHEUS_MULTIPROC_DIR" in refused.stderr
