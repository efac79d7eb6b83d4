"""Every molecule scenario names existing suites of tests/infra in STACKKIT_TESTS (a renamed
suite would otherwise drop out of CI unseen), and every suite runs in at least one scenario
that `make test` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def suite_names() -> set[str]:
    return {p.stem.removeprefix("test_") for p in (ROOT / "tests" / "infra").glob("test_*.py")}


def make_scenarios() -> list[str]:
    """The scenarios `make molecule` (and so `make test`) runs, as make itself expands them."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(ROOT), "-f", "Makefile", "-f", "-",
         "print-scenarios"],
        input="print-scenarios:\n\t@echo $(SCENARIOS)\n",
        env={k: v for k, v in os.environ.items() if k not in ("SCENARIOS", "MAKEFLAGS")},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def selected(scenario: str) -> set[str]:
    """STACKKIT_TESTS as molecule sets it: the scenario's own, else base.yml's default (the
    scenario's name)."""
    config = yaml.safe_load((ROOT / "molecule" / scenario / "molecule.yml").read_text())
    base = yaml.safe_load((ROOT / "molecule" / "base.yml").read_text())
    env = {**base["verifier"]["env"], **(config.get("verifier") or {}).get("env", {})}
    value = env["STACKKIT_TESTS"].replace("${MOLECULE_SCENARIO_NAME}", scenario)
    return {name.strip() for name in value.split(",")}


def test_make_test_runs_every_scenario_directory():
    found = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    assert sorted(make_scenarios()) == found
    assert "multi" in found


def test_every_scenario_names_existing_suites_only():
    suites = suite_names()
    unknown = {s: sorted(selected(s) - suites) for s in make_scenarios() if selected(s) - suites}
    assert not unknown, f"scenarios name suites tests/infra does not have: {unknown}"


def test_every_suite_runs_in_a_scenario_of_make_test():
    covered = set().union(*(selected(s) for s in make_scenarios()))
    assert suite_names() - covered == set(), "suites no scenario of make test runs"


def test_a_name_that_is_no_suite_stops_the_run_before_any_host_is_contacted(tmp_path):
    """tests/infra's own selection refuses it too, so a scenario cannot pass on fewer suites."""
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    probe1:\n      ansible_port: 1\n")
    env = dict(os.environ, STACKKIT_TESTS="binds,no_such_suite")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--connection=ansible",
         f"--ansible-inventory={tmp_path / 'hosts.yml'}", "tests/infra"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "STACKKIT_TESTS names no suite no_such_suite" in out
