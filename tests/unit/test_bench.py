"""The benches' own logic: what make bench reads from profile_tasks and profile_roles, and the
report make bench-report writes from the JSON the benches leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackkit.bench import converge

ROOT = Path(__file__).resolve().parents[2]

OUTPUT = """\
TASKS RECAP ********************************************************************
===============================================================================
common : Write the firewall rules --------------------------------------- 4.25s
ansible.builtin.include_role -------------------------------------------- 0.05s

ROLES RECAP ********************************************************************
===============================================================================
common ----------------------------------------------------------------- 18.90s
pki --------------------------------------------------------------------- 5.14s
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
total ----------------------------------------------------------------- 111.09s
"""


def test_profile_splits_roles_from_tasks():
    roles, tasks = converge.profile(OUTPUT)
    assert roles == {"common": 18.90, "pki": 5.14, "total": 111.09}
    assert tasks[0] == ("common : Write the firewall rules", 4.25)


def test_the_bench_inventory_puts_its_host_in_every_tier():
    text = converge.inventory("10.9.8.7")
    assert "ansible_host: 10.9.8.7" in text
    for group in ("web", "app", "worker", "db", "cache", "broker", "search", "docs"):
        assert f"    {group}:\n      hosts:\n        bench1:\n" in text


def run(cold: float, noop: float) -> dict:
    return {
        "seconds": cold if noop is None else noop,
        "ok": 100,
        "changed": 0,
        "failed": False,
        "roles": {"common": 1.0, "total": 2.0},
        "slowest": [["common : x", 0.5]],
        "log": "x",
    }


def test_the_report_has_its_tables_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from stackkit.bench import report  # noqa: PLC0415 - needs the bench extra

    strategy = {"cold": run(200, None), "noop": run(200, 20)}
    converge_json = {
        "date": "2026-11-27 05:00 UTC", "machine": "m, 2 cores", "suite": "trixie",
        "mitogen": "available", "floor": {"seconds": 80.0, "packages": ["nginx"]},
        "strategies": {"linear": strategy},
    }  # fmt: skip
    (tmp_path / "converge.json").write_text(json.dumps(converge_json))
    endpoint = {"users": 32, "requests": 10, "non_2xx": 0, "rps": 5.0, "p50": 1.0, "p95": 2.0,
                "p99": 3.0, "max": 4.0, "history": [[0, 5.0, 2.0], [1, 5.0, 2.0]]}  # fmt: skip
    app_json = {"date": "d", "machine": "m", "label": "", "users": 32, "rate": 0, "duration": 20,
                "endpoints": {"page": endpoint}}  # fmt: skip
    (tmp_path / "app.json").write_text(json.dumps(app_json))
    assert report.main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| linear | 200.0 | 2.50 | 20.0 | 0.100 | 100 | 0 |" in text
    assert "| page | 5 | 1 | 2 | 3 | 4 | 0 |" in text
    for image in ("converge-strategies.png", "converge-tiers.png", "app-latency.png"):
        assert (tmp_path / image).stat().st_size > 0
