"""The harness of tests/infra keeps its two kinds of checks apart: destructive checks are
refused, before any host is contacted, on an inventory that does not call its hosts
disposable; read-only checks run anywhere. Variables resolve as a play sees them, or fail.

pytest runs tests/infra here against temporary inventories whose one host is a closed port on
loopback: a check that ran anyway would fail to connect, and harm nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stackkit.inventory import PlayVars, UnresolvedVariable

ROOT = Path(__file__).resolve().parents[2]

GROUPS = ("web", "app", "worker", "db", "cache", "broker", "search", "docs")


def inventory(tmp_path: Path, disposable: bool | None, **extra) -> Path:
    """One host in every group, reached over SSH on a closed loopback port."""
    directory = tmp_path / "inventory"
    (directory / "group_vars").mkdir(parents=True)
    host = {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"}
    hosts = {
        "all": {
            "hosts": {"probe1": host},
            "children": {group: {"hosts": {"probe1": {}}} for group in GROUPS},
        }
    }
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    variables = dict(extra)
    if disposable is not None:
        variables["stackkit_disposable"] = disposable
    (directory / "group_vars" / "all.yml").write_text(yaml.safe_dump(variables))
    return directory


def infra_pytest(inventory_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("STACKKIT_TESTS", None)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--connection=ansible"]
    command += [f"--ansible-inventory={inventory_dir}", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("disposable", [None, False], ids=["unset", "false"])
def test_destructive_checks_are_refused_on_an_inventory_not_marked_disposable(tmp_path, disposable):
    result = infra_pytest(inventory(tmp_path, disposable), "tests/infra/test_redis.py")
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "refusing to run" in out
    assert "destructive checks" in out
    assert "probe1 do not set stackkit_disposable: true" in out
    assert "-m 'not destructive'" in out
    # Refused before any test ran: nothing passed, failed or erred against the host.
    assert " passed" not in out
    assert " failed" not in out
    assert "::test_" not in result.stdout.replace("(e.g. tests/infra/test_redis.py::test_", "")


def test_read_only_checks_are_selected_on_any_inventory(tmp_path):
    result = infra_pytest(
        inventory(tmp_path, None), "tests/infra", "-m", "not destructive", "--collect-only", "-q"
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert any("test_redis.py::test_unauthenticated_ping_is_refused" in c for c in collected)
    assert not any("test_persistent_message_survives_a_restart" in c for c in collected)
    assert not any("FLUSHALL" in c for c in collected)
    assert not any("test_fabric.py" in c for c in collected)


def test_destructive_checks_are_allowed_where_the_inventory_says_disposable(tmp_path):
    result = infra_pytest(
        inventory(tmp_path, True), "tests/infra/test_redis.py", "--collect-only", "-q"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FLUSHALL" in result.stdout


def test_every_infra_test_file_has_read_only_or_destructive_checks_by_marker(tmp_path):
    """Writing, stopping and deploying suites are marked whole; make verify keeps the rest."""
    hosts = inventory(tmp_path, True)
    everything = infra_pytest(hosts, "tests/infra", "--collect-only", "-q")
    safe = infra_pytest(hosts, "tests/infra", "-m", "not destructive", "--collect-only", "-q")
    assert everything.returncode == safe.returncode == 0, everything.stdout + safe.stdout
    ids = {line for line in everything.stdout.splitlines() if "::" in line}
    safe_ids = {line for line in safe.stdout.splitlines() if "::" in line}
    destructive = ids - safe_ids
    for module in ("test_fabric.py", "test_chaos.py"):
        assert not any(module in i for i in safe_ids), module
    for name in (
        "test_a_worker_killed_in_the_middle_of_an_insert_loses_no_product",
        "test_persistent_message_survives_a_restart",
        "test_dump_drop_restore_gives_equal_row_counts",
        "test_undeclared_port_is_closed_from_another_host",
        "test_indexed_document_can_be_searched",
        "test_app_user_authenticates_inserts_and_reads_back",
    ):
        assert any(name in i for i in destructive), name
    assert any("test_verify_readonly.py" in i for i in destructive)


def test_a_variable_resolves_as_the_play_renders_it_or_fails_loudly(tmp_path):
    facts = {"ansible_facts": {"processor_vcpus": 3}}
    resolver = PlayVars(
        str(inventory(tmp_path, True, redis_maxmemory="64mb")), facts=lambda host: facts
    )
    # The inventory overrides the role's default; a default renders through the facts.
    assert resolver.value("probe1", "redis_maxmemory", "redis") == "64mb"
    assert resolver.value("probe1", "redis_port", "redis") == 6379
    assert resolver.value("probe1", "gunicorn_workers", "gunicorn") == 7
    with pytest.raises(UnresolvedVariable, match="redis_no_such_variable is not defined"):
        resolver.value("probe1", "redis_no_such_variable", "redis")
    # A default whose template needs a fact the host did not report is an error, not its text.
    with pytest.raises(UnresolvedVariable, match="postgresql_memory_mb cannot be rendered"):
        resolver.value("probe1", "postgresql_memory_mb", "postgresql")


def test_vault_encrypted_inventory_values_are_decrypted(tmp_path):
    """The local inventory's vault opens with the password file named in the environment."""
    local = ROOT / "inventories" / "local"
    directory = inventory(tmp_path, True)
    (directory / "group_vars" / "all.yml").unlink()
    (directory / "group_vars" / "all").symlink_to(local / "group_vars" / "all")
    resolver = PlayVars(
        str(directory),
        facts=lambda host: {},
        vault_password_file=str(ROOT / "tests" / "hosts" / "local-vault-password"),
    )
    password = resolver.value("probe1", "vault_redis_app_password")
    assert password
    assert "$ANSIBLE_VAULT" not in password
    assert resolver.render("probe1", "stackkit_disposable") is True
