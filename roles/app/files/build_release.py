#!/usr/bin/env python3
"""Build a release of the catalogue on the controller: the code archive and the wheelhouse.

Both Ansible (the app role) and Fabric (fabfile.py) deploy what this script builds, so a
release means the same thing whichever tool ships it:

- the code archive holds `app/` without virtualenvs, caches and collected static files. It
  is byte-for-byte reproducible (sorted members, fixed owners, modes and times), so its
  digest names the release: the same code gives the same release id on every controller.
- the wheelhouse holds every locked requirement as a wheel for the hosts' Python and CPU,
  downloaded with the controller's own pip configuration and hash-checked against the lock.
  Hosts install from it with `--no-index`: they never need to reach a package index.

Prints one JSON object: release id, archive path, wheelhouse id and path.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

EXCLUDED_DIRS = {".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "staticfiles", "media"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".sqlite3")
# Wheels a host can run: manylinux up to the glibc of the oldest supported release
# (Ubuntu 22.04: 2.35), plus pure-Python wheels, which pip always accepts.
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux_2_34")


def release_files(source: Path) -> list[Path]:
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and not path.name.endswith(EXCLUDED_SUFFIXES):
            files.append(rel)
    return files


def deterministic_tar(members: list[tuple[str, Path]], compress: bool) -> bytes:
    """A tar of (name, file) pairs whose bytes depend on the names and contents only."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in members:
            info = tarfile.TarInfo(name)
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    if not compress:
        return raw.getvalue()
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomically, through a temporary file of its own: two builds at once (two playbooks on
    one controller) never write into the same file."""
    if not path.exists() or path.read_bytes() != data:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.chmod(name, 0o644)
        Path(name).replace(path)


def build_code(source: Path, out: Path) -> tuple[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = deterministic_tar([(str(rel), source / rel) for rel in release_files(source)], True)
    release_id = hashlib.sha256(data).hexdigest()[:12]
    archive = out / f"catalogue-{release_id}.tar.gz"
    write_if_changed(archive, data)
    return release_id, archive


def build_wheelhouse(requirements: Path, out: Path, python: str, arch: str) -> tuple[str, Path]:
    major, minor = python.split(".")[:2]
    tag = f"cp{major}{minor}"
    key = hashlib.sha256(requirements.read_bytes() + f"{tag}-{arch}".encode()).hexdigest()[:12]
    archive = out / f"wheelhouse-{key}.tar"
    if archive.exists():
        return key, archive
    out.mkdir(parents=True, exist_ok=True)
    wheels = Path(tempfile.mkdtemp(dir=out, prefix=f".wheelhouse-{key}."))
    platforms = [arg for ml in MANYLINUX for arg in ("--platform", f"{ml}_{arch}")]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}",
           "--abi", tag, *platforms, "--require-hashes", "-r", str(requirements),
           "--dest", str(wheels)]  # fmt: skip
    subprocess.run(cmd, check=True)
    members = [(p.name, p) for p in sorted(wheels.iterdir()) if p.suffix == ".whl"]
    write_if_changed(archive, deterministic_tar(members, compress=False))
    shutil.rmtree(wheels)
    return key, archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the app/ directory")
    parser.add_argument("--out", type=Path, required=True, help="where archives are kept")
    parser.add_argument("--python", required=True, help="the hosts' Python, e.g. 3.13")
    parser.add_argument("--arch", default="x86_64", help="the hosts' CPU, e.g. x86_64, aarch64")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    release_id, archive = build_code(args.source.resolve(), args.out)
    wheelhouse_id, wheelhouse = build_wheelhouse(
        args.source / "requirements.txt", args.out, args.python, args.arch
    )
    result = {"release_id": release_id, "archive": str(archive.resolve()),
              "wheelhouse_id": wheelhouse_id, "wheelhouse": str(wheelhouse.resolve())}  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
