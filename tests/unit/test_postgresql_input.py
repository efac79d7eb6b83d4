"""The postgresql role refuses bad input before it changes anything, naming the variable.

The role's preflight runs on the controller (tests/unit/preflight.py); a role that let the
input through would stop at nothing else.
"""

from __future__ import annotations

import pytest
from preflight import run_preflight

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
    "postgresql_users": [{"name": "catalogue", "password": "unit-test-only-catalogue"}],
    "postgresql_databases": [{"name": "catalogue", "owner": "catalogue"}],
    "postgresql_listen_addresses": ["localhost"],
}


def run_role(tmp_path, extra: dict):
    return run_preflight(tmp_path, "postgresql", {**BASE, **extra})


def test_good_input_passes_preflight(tmp_path):
    result = run_role(tmp_path, {"postgresql_partitioned_tables": [GOOD_TABLE]})
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_look_ahead_cap_of_premake_passes(tmp_path):
    table = {**GOOD_TABLE, "premake": 2, "max_ahead": 2}
    result = run_role(tmp_path, {"postgresql_partitioned_tables": [table]})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"interval": "week"}, "week"),
        ({"mode": "sharded"}, "sharded"),
        ({"column": "updated_at"}, "column one of its columns"),
        ({"database": "elsewhere"}, "database one of postgresql_databases"),
        ({"premake": 3, "max_ahead": 2}, "max_ahead at least premake"),
    ],
    ids=[
        "interval-week",
        "unknown-mode",
        "column-not-a-column",
        "unknown-database",
        "max-ahead-below-premake",
    ],
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


@pytest.mark.parametrize(
    "change",
    [
        {"postgresql_monitoring_role": "Exporter"},
        {"postgresql_monitoring_role": "catalogue"},
        {"postgresql_monitoring_role": "postgres"},
        {"postgresql_monitoring_role": "postgres_exporter", "postgresql_monitoring_os_user": "a b"},
    ],
    ids=["upper-case", "an-app-role", "the-superuser", "bad-os-user"],
)
def test_bad_monitoring_role_fails_naming_the_variable(tmp_path, change):
    result = run_role(tmp_path, change)
    assert result.returncode != 0, result.stdout
    assert "postgresql_monitoring_role" in result.stdout + result.stderr


def test_a_monitoring_role_passes(tmp_path):
    result = run_role(tmp_path, {"postgresql_monitoring_role": "postgres_exporter"})
    assert result.returncode == 0, result.stdout + result.stderr
