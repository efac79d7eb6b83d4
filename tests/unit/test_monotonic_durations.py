"""Durations the project prints or waits on come from a monotonic clock: a wall clock that
steps (NTP, a VM's clock corrected) once printed `common passed in -3414 s`.

The wall clock stays right for timestamps (a journal's --since, a report's date); the files
that use it for one are listed here with the reason.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The wall clock read for a duration: in shell, date's epoch seconds and bash's SECONDS
# variable (which follows the wall clock); in Python, the time function of the time module.
SHELL_WALL_CLOCK = re.compile(r"date \+%s|\$\$?SECONDS\b")
PYTHON_WALL_CLOCK = re.compile(r"\btime\.time\(\)")
TIMESTAMPS = {
    "molecule/rabbitmq-cluster/publisher.py": "bounds of the journal the check reads",
    "stackkit/clock.py": "a host's clock compared with the controller's",
    "tests/unit/test_clock_skew.py": "a fake host's clock, for that comparison",
}
# A test host's epoch seconds mark where to start reading its journal (a timestamp).
SHELL_TIMESTAMPS = {"tests/infra/test_app.py"}


def project_files(*patterns: str) -> list[Path]:
    """The project's files that match, not the app's (its own clock uses are its business) nor
    a virtualenv's."""
    files = {path for pattern in patterns for path in ROOT.glob(pattern) if path.is_file()}
    return sorted(
        path for path in files if path.relative_to(ROOT).parts[0] not in {"app", ".venv", ".cache"}
    )


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize(
    "path",
    project_files(
        "Makefile",
        ".ci/*",
        "tests/**/*.sh",
        "tests/**/*.py",
        "stackkit/**/*.py",
        "molecule/**/*.yml",
    ),
    ids=relative,
)
def test_no_shell_duration_reads_the_wall_clock(path):
    if relative(path) in SHELL_TIMESTAMPS:
        return
    lines = path.read_text().splitlines()
    hits = [line.strip() for line in lines if SHELL_WALL_CLOCK.search(line)]
    assert hits == [], f"{relative(path)} times with the wall clock: {hits}"


@pytest.mark.parametrize(
    "path",
    project_files(
        "tests/**/*.py", "stackkit/**/*.py", "molecule/**/*.py", "fabfile.py", "roles/*/files/*.py"
    ),
    ids=relative,
)
def test_no_python_duration_reads_the_wall_clock(path):
    lines = path.read_text().splitlines()
    hits = [line.strip() for line in lines if PYTHON_WALL_CLOCK.search(line)]
    if relative(path) in TIMESTAMPS:
        assert hits, f"{relative(path)} no longer reads the wall clock: drop it from TIMESTAMPS"
        return
    assert hits == [], f"{relative(path)} times with the wall clock: {hits}"


def test_the_makefile_clock_counts_whole_seconds_forward():
    """The command the Makefile's timings run (MONOTONIC) works and does not go back."""
    makefile = (ROOT / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if line.startswith("MONOTONIC"))
    command = line.split(":=", 1)[1].strip()

    def read() -> int:
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
        return int(run.stdout)

    first, second = read(), read()
    assert 0 < first <= second
    assert "$(MONOTONIC)" in makefile
