"""roles/app/files/catalogue_release.py, the on-host release protocol: the parts that need no
service (refusals naming their step, pruning, the nginx drain). The whole protocol runs against
real hosts in tests/infra/test_deploy.py."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location(
    "catalogue_release", ROOT / "roles/app/files/catalogue_release.py"
)
release = importlib.util.module_from_spec(SPEC)
sys.modules["catalogue_release"] = release
SPEC.loader.exec_module(release)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A release root and its settings file, as the app role writes them."""
    root = tmp_path / "srv"
    for name in ("releases", "wheelhouse", "archives"):
        (root / name).mkdir(parents=True)
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(
        "# Ansible managed\nserver 10.0.0.5:8000 max_fails=3 fail_timeout=10s;\n"
        "server 10.0.0.6:8000 max_fails=3 fail_timeout=10s;\n"
    )
    conf = tmp_path / "release.conf"
    conf.write_text(
        f"# Ansible managed\n[release]\nroot = {root}\nmanage = /bin/false\npython = /bin/false\n"
        "target = catalogue.target\nweb_service = catalogue-web\nhealth_path = /readyz\n"
        "health_host = localhost\nhealth_timeout = 5\nkeep_releases = 3\n"
        "migrate_owner = catalogue\n"
        f"reindex = true\nnginx_upstream_file = {upstream}\n"
    )
    monkeypatch.setattr(release, "CONFIG", conf)
    return root, upstream


def installed(root: Path, release_id: str, wheelhouse: str, mtime: int) -> Path:
    path = root / "releases" / release_id
    (path / ".venv").mkdir(parents=True)
    (path / ".venv" / release.MARKER).write_text(release_id + "\n")
    (path / release.WHEELHOUSE_NOTE).write_text(wheelhouse + "\n")
    (root / "wheelhouse" / wheelhouse).mkdir(exist_ok=True)
    os.utime(path, (mtime, mtime))
    return path


def test_activating_a_release_that_is_not_installed_fails_at_the_check_step(host, capsys):
    assert release.main(["activate", "aaaaaaaaaaaa"]) == 1
    err = capsys.readouterr().err
    assert "activate failed at step 'check'" in err
    assert not (host[0] / "current").exists()


def test_an_archive_not_built_by_the_builder_is_refused(host, tmp_path, capsys):
    archive = tmp_path / "release.tar.gz"
    archive.write_bytes(b"")
    assert release.main(["install", str(archive)]) == 1
    assert "install failed at step 'check'" in capsys.readouterr().err


def test_rollback_without_a_previous_release_changes_nothing(host, capsys):
    root, _ = host
    live = installed(root, "a" * 12, "w" * 12, 100)
    release.point(root / "current", live)
    assert release.main(["rollback"]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert os.readlink(root / "current") == str(live)


def test_prune_keeps_live_previous_and_newest_and_their_wheelhouses(host, capsys):
    root, _ = host
    ids = [c * 12 for c in "abcde"]
    paths = [installed(root, rid, f"{i}" * 12, 100 + i) for i, rid in enumerate(ids)]
    release.point(root / "current", paths[0])  # oldest is live (a rollback went back to it)
    release.point(root / "previous", paths[1])
    assert release.main(["prune"]) == 0
    kept = sorted(p.name for p in (root / "releases").iterdir())
    assert kept == [ids[0], ids[1], ids[4]]
    assert sorted(p.name for p in (root / "wheelhouse").iterdir()) == ["0" * 12, "1" * 12, "4" * 12]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["changed"] is True
    assert release.main(["prune"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["changed"] is False


def test_drain_refuses_to_take_out_the_last_server_up(host, monkeypatch, capsys):
    _, upstream = host
    calls = []
    monkeypatch.setattr(release, "run", lambda step, argv, **kw: calls.append(argv) or "")
    assert release.main(["drain", "10.0.0.5:8000"]) == 0
    assert "server 10.0.0.5:8000 down max_fails=3" in upstream.read_text()
    assert calls == [["nginx", "-t", "-q"], ["systemctl", "reload", "nginx"]]
    assert release.main(["drain", "10.0.0.5:8000"]) == 0  # already drained: no reload
    assert len(calls) == 2
    assert release.main(["drain", "10.0.0.6:8000"]) == 1
    assert "last server" in capsys.readouterr().err
    assert release.main(["undrain", "10.0.0.5:8000"]) == 0
    assert upstream.read_text().count(" down") == 0


def test_a_restart_restarts_the_targets_services_and_leaves_its_socket_open(host, monkeypatch):
    """gunicorn's socket is PartOf the target (stopping the app stops it): a restart of the
    target would close it, so the release tool restarts the target's services instead."""
    calls = []

    def run(step, argv, **kw):
        calls.append(argv)
        if argv[:2] == ["systemctl", "show"] and argv[3] == "ConsistsOf":
            return (
                "catalogue-web.socket catalogue-worker@default.service"
                " catalogue-web.service catalogue-beat.service\n"
            )
        return ""

    monkeypatch.setattr(release, "run", run)
    release.restart(release.Config.load())
    assert calls[-2:] == [
        ["systemctl", "try-restart", "catalogue-beat.service", "catalogue-web.service",
         "catalogue-worker@default.service"],
        ["systemctl", "start", "catalogue.target"],
    ]  # fmt: skip
    assert not any("restart" in argv and "catalogue.target" in argv for argv in calls)
    assert not any("catalogue-web.socket" in argv for argv in calls if argv[1] != "show")
