"""Run a role's preflight on the controller, as a play would on a supported host.

The role runs in check mode limited to its `<role>_preflight` tag (argument specs are validated
before any task), so a failure can only come from the input under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Facts of a supported host, so that only the input under test can fail.
FACTS = {
    "distribution": "Debian",
    "distribution_release": "trixie",
    "distribution_version": "13",
    "distribution_major_version": "13",
    "os_family": "Debian",
    "memtotal_mb": 2048,
    "processor_vcpus": 2,
    "architecture": "x86_64",
    "python_version": "3.13.5",
    "default_ipv4": {"address": "10.0.0.5"},
}


def run_preflight(tmp_path: Path, role: str, variables: dict) -> subprocess.CompletedProcess:
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_facts": FACTS},
            "roles": [role],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(variables))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "--check",
        "--tags",
        f"{role}_preflight",
        "-i",
        "localhost,",
        "-e",
        f"@{tmp_path / 'vars.yml'}",
        str(tmp_path / "play.yml"),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )


def output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr with line wrapping undone, for matching messages."""
    return " ".join((result.stdout + result.stderr).split())
