"""The Elastic and MongoDB repositories' signing keys are trusted only when the downloaded key
is exactly the pinned one: the collection's module stackkit.kit.signing_key, which both roles
call, run on the controller with real keys made here by gpg (served as file:// URLs).

The pinned key is written with mode 0644 and a second run changes nothing; another key, or the
pinned key with another beside it, fails the run naming the source and the fingerprints
expected and found, and nothing is written; --check verifies the key but writes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from preflight import ROOT, output, run_play

ROLES = ("elasticsearch", "mongodb")


def gpg(home: Path, *args: str) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return subprocess.run(
        ["gpg", "--batch", *args], env=env, check=True, capture_output=True
    ).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Two throwaway signing keys (each with an encryption subkey, as vendors' keys have):
    name -> (primary fingerprint, armored public key file); `both` serves the two at once."""
    # A missing gpg fails the suite instead of skipping it: `make test-tools` installs it.
    assert shutil.which("gpg"), "gpg is not on PATH: `make test-tools` installs it"
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    made = {}
    try:
        for name in ("vendor", "other"):
            uid = f"{name} <{name}@example.com>"
            gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
            listing = gpg(home, "--with-colons", "--list-keys", uid).decode()
            fingerprint = re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE).group(1)
            gpg(home, "--passphrase", "", "--quick-add-key", fingerprint, "cv25519", "encr")
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


def run_signing_key(tmp_path: Path, key_file: Path, fingerprint: str, *options: str, **args):
    """One task of the module (the key from `url`, or as `args` say), with the fingerprint
    spaced as the roles' defaults write it."""
    source = args or {"url": key_file.as_uri()}
    task = {
        "stackkit.kit.signing_key": {
            **source,
            "fingerprint": " ".join(re.findall("....", fingerprint)),
            "dest": str(tmp_path / "trusted.asc"),
        },
    }
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [task]}]
    variables = {"ansible_python_interpreter": sys.executable}
    return run_play(tmp_path, play, variables, *options)


def changed(result) -> int:
    return int(re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", result.stdout).group(1))


def test_the_pinned_key_is_trusted_and_a_second_run_changes_nothing(tmp_path, keys):
    fingerprint, key_file = keys["vendor"]
    first = run_signing_key(tmp_path, key_file, fingerprint)
    assert first.returncode == 0, first.stdout + first.stderr
    assert changed(first) == 1, first.stdout
    trusted = tmp_path / "trusted.asc"
    assert trusted.read_bytes() == key_file.read_bytes()
    assert trusted.stat().st_mode & 0o777 == 0o644
    second = run_signing_key(tmp_path, key_file, fingerprint)
    assert second.returncode == 0, second.stdout + second.stderr
    assert changed(second) == 0, second.stdout


def test_a_key_that_changed_at_the_source_replaces_the_keyring_and_its_mode(tmp_path, keys):
    fingerprint, key_file = keys["vendor"]
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(b"an older copy\n")
    trusted.chmod(0o600)
    result = run_signing_key(tmp_path, key_file, fingerprint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert trusted.read_bytes() == key_file.read_bytes()
    assert trusted.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("served", ["other", "both"], ids=["another-key", "an-extra-key"])
def test_any_other_key_is_refused_naming_the_source_and_both_fingerprints(tmp_path, keys, served):
    pinned, _ = keys["vendor"]
    _, key_file = keys[served]
    result = run_signing_key(tmp_path, key_file, pinned)
    out = output(result)
    assert result.returncode != 0
    assert f"{key_file.as_uri()} does not hold exactly the pinned key {pinned}" in out
    assert keys["other"][0] in out
    assert "The key is not trusted" in out
    assert not (tmp_path / "trusted.asc").exists()


def test_check_mode_verifies_and_shows_the_key_but_writes_nothing(tmp_path, keys):
    fingerprint, key_file = keys["vendor"]
    result = run_signing_key(tmp_path, key_file, fingerprint, "--check", "--diff")
    assert result.returncode == 0, result.stdout + result.stderr
    assert changed(result) == 1, result.stdout
    assert "+-----BEGIN PGP PUBLIC KEY BLOCK-----" in result.stdout
    assert not (tmp_path / "trusted.asc").exists()
    refused = run_signing_key(tmp_path, keys["other"][1], fingerprint, "--check")
    assert refused.returncode != 0
    assert "does not hold exactly the pinned key" in output(refused)


def test_a_key_file_on_the_host_is_read_as_src(tmp_path, keys):
    fingerprint, key_file = keys["vendor"]
    result = run_signing_key(tmp_path, key_file, fingerprint, src=str(key_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "trusted.asc").read_bytes() == key_file.read_bytes()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_trusts_its_key_through_the_module(role):
    """The role's task passes its own variables and registers what its later tasks test
    (`__<role>_apt_key_trusted is changed` refreshes the package lists)."""
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "install.yml").read_text())

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.get("block", []))

    (task,) = [t for t in walk(tasks) if "stackkit.kit.signing_key" in t]
    assert task["stackkit.kit.signing_key"] == {
        "url": f"{{{{ {role}_apt_key_url }}}}",
        "fingerprint": f"{{{{ __{role}_apt_key_fingerprint }}}}",
        "dest": f"{{{{ __{role}_apt_key }}}}",
    }
    assert task["register"] == f"__{role}_apt_key_trusted"
    assert f"{role}_apt_key_fingerprint" in task["name"]
