"""The release protocol through both drivers (playbooks/deploy.yml and `fab deploy`): a release
that fails to compile, to migrate or to pass its readiness check is never made live; the run
fails naming the step, and the previous release keeps serving through nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, address_of

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://web[0]"]
ROLE = "app"
BIN = Path(sys.executable).parent

MIGRATION = """\
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("a deliberately broken migration")


class Migration(migrations.Migration):
    dependencies = [("catalogue", "0002_submission_outbox")]
    operations = [migrations.RunPython(fail, migrations.RunPython.noop)]
"""


def syntax_error(app: Path) -> None:
    views = app / "catalogue" / "views.py"
    views.write_text(views.read_text() + "\ndef broken(:\n")


def failing_migration(app: Path) -> None:
    (app / "catalogue" / "migrations" / "0003_broken.py").write_text(MIGRATION)


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


@pytest.mark.parametrize("driver", ["ansible", "fab"])
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
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
    with urllib.request.urlopen(f"http://{address_of(host)}/healthz", timeout=10) as response:
        assert response.status == 200
