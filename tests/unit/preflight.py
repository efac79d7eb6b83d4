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


def run_play(directory: Path, play: list, variables: dict, *options: str):
    """ansible-playbook on the controller with the kit's roles and configuration; the play and
    its variables are written into `directory`."""
    (directory / "play.yml").write_text(yaml.safe_dump(play))
    (directory / "vars.yml").write_text(yaml.safe_dump(variables))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        # Ansible's own linear strategy: these plays are a few tasks on the controller's local
        # connection, where starting Mitogen (the kit's default) costs more than it saves.
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        *options,
        "-i",
        "localhost,",
        "-e",
        f"@{directory / 'vars.yml'}",
        str(directory / "play.yml"),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=directory, check=False
    )


def tasks_play(role: str, tasks_from: str) -> list:
    """A local play that runs one task file of a role."""
    include = {"name": role, "tasks_from": tasks_from}
    return [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [{"name": tasks_from, "ansible.builtin.include_role": include}],
        }
    ]


def run_preflight(tmp_path: Path, role: str, variables: dict) -> subprocess.CompletedProcess:
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            # The address the inventory names as the host's private one; app_source_dir defaults
            # to app/ beside the playbook's directory, and this play is not in playbooks/.
            "vars": {
                "ansible_facts": FACTS,
                "private_address": "10.0.0.5",
                "app_source_dir": str(ROOT / "app"),
            },
            "roles": [role],
        }
    ]
    return run_play(tmp_path, play, variables, "--check", "--tags", f"{role}_preflight")


def output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr with line wrapping undone, for matching messages."""
    return " ".join((result.stdout + result.stderr).split())
