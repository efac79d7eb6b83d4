"""The release builder names a release by its content: the same code gives the same id on any
controller, any change gives another, and local leftovers never ship."""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "build_release", ROOT / "roles/app/files/build_release.py"
)
build_release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_release)


@pytest.fixture
def source(tmp_path):
    app = tmp_path / "app"
    (app / "catalogue").mkdir(parents=True)
    (app / "manage.py").write_text("print('manage')\n")
    (app / "manage.py").chmod(0o755)
    (app / "catalogue" / "views.py").write_text("VIEWS = 1\n")
    return app


def test_the_same_code_gives_the_same_release(source, tmp_path):
    first, archive = build_release.build_code(source, tmp_path / "out1")
    os.utime(source / "manage.py", (1, 1))  # times and the machine do not matter
    second, again = build_release.build_code(source, tmp_path / "out2")
    assert first == second
    assert archive.read_bytes() == again.read_bytes()


def test_a_change_gives_another_release(source, tmp_path):
    before, _ = build_release.build_code(source, tmp_path / "out")
    (source / "catalogue" / "views.py").write_text("VIEWS = 2\n")
    after, _ = build_release.build_code(source, tmp_path / "out")
    assert before != after


def test_virtualenvs_caches_and_collected_files_are_left_out(source, tmp_path):
    for leftover in (".venv/bin/python", "catalogue/__pycache__/views.pyc", "staticfiles/a.css"):
        (source / leftover).parent.mkdir(parents=True, exist_ok=True)
        (source / leftover).write_text("local only\n")
    release, archive = build_release.build_code(source, tmp_path / "out")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["catalogue/views.py", "manage.py"]
    assert members["manage.py"].mode == 0o755
    assert members["catalogue/views.py"].mode == 0o644
    assert {m.uid for m in members.values()} == {0}
    assert archive.name == f"catalogue-{release}.tar.gz"
