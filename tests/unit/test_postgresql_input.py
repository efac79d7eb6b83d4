"""The postgresql role refuses bad input before it changes anything, naming the variable.

The role runs against the controller in check mode, limited to its preflight (argument specs
are validated before any task); a role that let the input through would stop at nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    # Facts of a supported host, so that only the input under test can fail.
    ansible_facts:
      distribution: Debian
      distribution_version: "13"
      distribution_major_version: "13"
      memtotal_mb: 2048
  roles:
    - postgresql
"""
GOOD_TABLE = {
    "database": "catalogue",
    "table": "events",
    "column": "created_at",
    "interval": "month",
    "retention": 12,
    "owner": "catalogue",
    "columns": [{"name": "created_at", "type": "timestamptz NOT NULL"}],
}
BASE = {
    "postgresql_users": [{"name": "catalogue", "password": "unit-test-only"}],
    "postgresql_databases": [{"name": "catalogue", "owner": "catalogue"}],
    "postgresql_listen_addresses": ["localhost"],
}


def run_role(tmp_path: Path, extra: dict) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "vars.yml").write_text(yaml.safe_dump({**BASE, **extra}))
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
        "postgresql_preflight",
        "-i",
        "localhost,",
        "-e",
        f"@{tmp_path / 'vars.yml'}",
        str(tmp_path / "play.yml"),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )


def test_good_input_passes_preflight(tmp_path):
    result = run_role(tmp_path, {"postgresql_partitioned_tables": [GOOD_TABLE]})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"interval": "week"}, "week"),
        ({"mode": "sharded"}, "sharded"),
        ({"column": "updated_at"}, "column one of its columns"),
        ({"database": "elsewhere"}, "database one of postgresql_databases"),
    ],
    ids=["interval-week", "unknown-mode", "column-not-a-column", "unknown-database"],
)
def test_bad_partitioned_table_fails_naming_the_variable(tmp_path, change, expected):
    result = run_role(tmp_path, {"postgresql_partitioned_tables": [{**GOOD_TABLE, **change}]})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "postgresql_partitioned_tables" in output
    assert expected in " ".join(output.split())


def test_empty_password_fails_naming_the_variable(tmp_path):
    result = run_role(tmp_path, {"postgresql_users": [{"name": "catalogue", "password": ""}]})
    assert result.returncode != 0
    assert "postgresql_users" in result.stdout + result.stderr
