"""The release protocol through both drivers (playbooks/deploy.yml and `fab deploy`): a release
that fails to compile, to migrate or to pass its readiness check is never made live; the run
fails naming the step, and the previous release keeps serving through nginx."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, address_of, internal_get, render

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://web"]
ROLE = "app"
BIN = Path(sys.executable).parent

MIGRATION = """\
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("a deliberately broken migration")


class Migration(migrations.Migration):
    dependencies = [("catalogue", "{latest}")]
    operations = [migrations.RunPython(fail, migrations.RunPython.noop)]
"""


def syntax_error(app: Path) -> None:
    views = app / "catalogue" / "views.py"
    views.write_text(views.read_text() + "\ndef broken(:\n")


def failing_migration(app: Path) -> None:
    """A migration that raises, after the app's latest one: the migrate step runs it (a second
    leaf would fail as a conflict instead, before any migration ran)."""
    migrations = app / "catalogue" / "migrations"
    latest = max(path.stem for path in migrations.glob("[0-9][0-9][0-9][0-9]_*.py"))
    number = int(latest[:4]) + 1
    (migrations / f"{number:04d}_broken.py").write_text(MIGRATION.format(latest=latest))


def failing_readiness(app: Path) -> None:
    health = app / "catalogue" / "health.py"
    text = health.read_text().replace(
        "def check_postgresql(timeout: float) -> None:\n",
        "def check_postgresql(timeout: float) -> None:\n"
        "    raise RuntimeError('a deliberately unready release')\n",
    )
    health.write_text(text)


BREAKAGES = {
    "syntax error": (syntax_error, "step 'compile'"),
    "failing migration": (failing_migration, "step 'migrate'"),
    "failing readiness": (failing_readiness, "step 'readiness'"),
}


def deploy(driver: str, source: Path, inventory: str) -> subprocess.CompletedProcess:
    if driver == "ansible":
        command = [str(BIN / "ansible-playbook"), "-i", inventory, "playbooks/deploy.yml",
                   "-e", f"app_source_dir={source}"]  # fmt: skip
    else:
        command = [str(BIN / "fab"), "deploy", "--source", str(source), "--inventory", inventory]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _first_web_host(host):
    """A deploy covers every host: run it once, checked from the first web host."""
    if render(host, "inventory_hostname != groups['web'][0]"):
        pytest.skip("deploys are checked from the first web host")


# Both drivers run the same steps (roles/app/files/build_release.py, then catalogue-release on
# each host), so each breakage is tried once, each driver at least once: the failing readiness,
# after which the switched host must go back, through deploy.yml's own switch.
REFUSALS = [
    ("syntax error", "fab"),
    ("failing migration", "fab"),
    ("failing readiness", "ansible"),
]


@pytest.mark.parametrize(("breakage", "driver"), REFUSALS)
def test_a_broken_release_is_refused_and_the_live_one_keeps_serving(
    host, v, driver, breakage, tmp_path, pytestconfig
):
    inventory = str(Path(pytestconfig.option.ansible_inventory).resolve())
    live = host.file(f"{v('app_root')}/current").linked_to
    checkout = tmp_path / "app"
    shutil.copytree(
        ROOT / "app", checkout, ignore=shutil.ignore_patterns(".venv", "__pycache__", "staticfiles")
    )
    breaks, step = BREAKAGES[breakage]
    breaks(checkout)

    result = deploy(driver, checkout, inventory)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert step in output, output[-3000:]
    assert host.file(f"{v('app_root')}/current").linked_to == live
    assert internal_get(host, "https://127.0.0.1/healthz")["status"] == 200


@pytest.mark.parametrize("driver", ["ansible", "fab"])
def test_a_release_switch_under_load_fails_no_request(host, driver, pytestconfig):
    """stackkit/bench/deploy.py, short: Locust through nginx while a changed release goes live."""
    # Looked up, not imported: importing Locust would patch this process with gevent.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("the load extra: pip install -e '.[load]'")
    inventory = str(Path(pytestconfig.option.ansible_inventory).resolve())
    url = f"https://{address_of(host)}"
    command = [sys.executable, "-m", "stackkit.bench.deploy", "--url", url, "--driver", driver]
    command += ["--users", "5", "--inventory", inventory]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    figures = re.search(
        rf"{driver} +deploy ok in \d+ s; requests (\d+), non-2xx (\d+),.*; new release live"
        r" (\w+); products accepted (\d+), not stored (\d+)",
        result.stdout,
    )
    assert figures, result.stdout
    requests, non_2xx, live, accepted, lost = figures.groups()
    # Load was there, nothing failed, the switch happened, and what was accepted was kept.
    assert int(requests) > 0 and int(non_2xx) == 0, result.stdout
    assert live == "yes", result.stdout
    assert int(accepted) > 0 and int(lost) == 0, result.stdout
