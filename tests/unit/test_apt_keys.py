"""The Elastic and MongoDB repositories' signing keys are trusted only when the downloaded key
is exactly the pinned one.

Each role's tasks/apt_key.yml runs on the controller with a key made here (served as a
file:// URL) and keyring paths under a temporary directory: the pinned key is trusted and a
second run changes nothing; another key, or the pinned key with another beside it, fails the
run naming the variable, and nothing is trusted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from preflight import run_play, tasks_play

ROLES = {
    "elasticsearch": "elasticsearch_apt_key_fingerprint",
    "mongodb": "mongodb_apt_key_fingerprint",
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tasks write root-owned files")


def gpg(home: Path, *args: str) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return subprocess.run(
        ["gpg", "--batch", *args], env=env, check=True, capture_output=True
    ).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Two throwaway signing keys: name -> (fingerprint, armored public key file)."""
    # A missing gpg fails the suite instead of skipping it: `make bootstrap` installs it.
    assert shutil.which("gpg"), "gpg is not on PATH: `make bootstrap` installs it (APT_PACKAGES)"
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    made = {}
    try:
        for name in ("vendor", "other"):
            uid = f"{name} <{name}@example.com>"
            gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
            listing = gpg(home, "--with-colons", "--list-keys", uid).decode()
            fingerprint = re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE).group(1)
            armored = home / f"{name}.asc"
            armored.write_bytes(gpg(home, "--armor", "--export", fingerprint))
            made[name] = (fingerprint, armored)
        both = home / "both.asc"
        both.write_bytes(made["vendor"][1].read_bytes() + made["other"][1].read_bytes())
        made["both"] = (made["vendor"][0], both)
    finally:
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    return made


def run_apt_key(tmp_path: Path, role: str, key_file: Path, fingerprint: str):
    variables = {
        "ansible_python_interpreter": sys.executable,
        "mongodb_version": "7.0",
        f"{role}_apt_key_url": key_file.as_uri(),
        f"{role}_apt_key_fingerprint": " ".join(re.findall("....", fingerprint)),
        f"__{role}_apt_key": str(tmp_path / "trusted.asc"),
        f"__{role}_apt_key_download": str(tmp_path / ".download.unverified"),
    }
    return run_play(tmp_path, tasks_play(role, "apt_key"), variables)


def changed(result) -> int:
    return int(re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", result.stdout).group(1))


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_pinned_key_is_trusted_and_a_second_run_changes_nothing(tmp_path, keys, role):
    fingerprint, key_file = keys["vendor"]
    first = run_apt_key(tmp_path, role, key_file, fingerprint)
    assert first.returncode == 0, first.stdout + first.stderr
    trusted = tmp_path / "trusted.asc"
    assert trusted.read_bytes() == key_file.read_bytes()
    assert trusted.stat().st_mode & 0o777 == 0o644
    second = run_apt_key(tmp_path, role, key_file, fingerprint)
    assert second.returncode == 0, second.stdout + second.stderr
    assert changed(second) == 0, second.stdout


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("served", ["other", "both"], ids=["another-key", "an-extra-key"])
def test_any_other_key_is_refused_naming_the_variable(tmp_path, keys, role, served):
    pinned, _ = keys["vendor"]
    _, key_file = keys[served]
    result = run_apt_key(tmp_path, role, key_file, pinned)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert ROLES[role] in out
    assert "The key is not trusted" in out
    assert not (tmp_path / "trusted.asc").exists()
