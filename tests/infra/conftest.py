"""Shared helpers for the testinfra suites.

Each suite targets one inventory group through ``testinfra_hosts`` and runs unchanged
against a molecule scenario's hosts or any inventory (``make verify INVENTORY=...``).
Expected values come from the inventory as Ansible renders it, falling back to the role's
defaults, never from constants repeated here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lint"))
# The exposure bounds `make lint` scores the rendered units against (tests/lint/unit_security.py).
from unit_security import APP_BOUND, DATA_BOUND  # noqa: E402

EXPOSURE_BOUNDS = {"app": APP_BOUND, "data": DATA_BOUND}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Molecule sets STACKKIT_TESTS to its scenario name and passes every suite's file
    explicitly: keep only that role's suite."""
    wanted = os.environ.get("STACKKIT_TESTS", "")
    if not wanted:
        return
    names = {name.strip() for name in wanted.split(",")}
    keep = [item for item in items if item.path.stem.removeprefix("test_") in names]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def render(host, expression: str):
    """Evaluate a Jinja expression with the host's inventory variables, as a play would."""
    result = host.ansible(
        "ansible.builtin.debug", f"msg={{{{ ({expression}) | to_json }}}}", check=False
    )
    if "msg" not in result:
        raise AssertionError(f"cannot render {expression!r} for {host.backend.host}: {result}")
    return json.loads(result["msg"])


def var_of(host, name: str, role: str):
    """The value of a role variable for `host`: the inventory's, else the role default. Ask the
    host the role runs on: another tier's group_vars are not visible from this one."""
    return render(host, name) if render(host, f"{name} is defined") else role_defaults(role)[name]


@pytest.fixture(scope="module")
def var(host) -> Callable[[str, str], object]:
    """var(name, role): var_of() for the host under test, remembered per module."""
    cache: dict[str, object] = {}

    def lookup(name: str, role: str):
        if name not in cache:
            cache[name] = var_of(host, name, role)
        return cache[name]

    return lookup


@pytest.fixture
def v(var, request) -> Callable[[str], object]:
    """v(name): var() for the role named by the suite's module-level ROLE."""
    return lambda name: var(name, request.module.ROLE)


@pytest.fixture(scope="session")
def inventory_hosts(pytestconfig) -> Callable[[str], list]:
    """inventory_hosts(pattern): testinfra hosts of another group, e.g. to probe from."""

    def get(pattern: str) -> list:
        return testinfra.get_hosts(
            [f"ansible://{pattern}"],
            ansible_inventory=pytestconfig.option.ansible_inventory,
            connection="ansible",
            sudo=pytestconfig.option.sudo,
        )

    return get


@pytest.fixture
def app_host(inventory_hosts):
    """The first app host, to speak to a service from as the app does."""
    peers = inventory_hosts("app")
    if not peers:
        pytest.skip("no app host in this inventory to speak from")
    return peers[0]


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container --quiet").rc == 0


def address_of(host) -> str:
    return render(host, "ansible_host | default(inventory_hostname)")


def wait_for(condition: Callable[[], bool], timeout: float = 30, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def tcp_reachable_from_controller(address: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_reachable_from(peer, address: str, port: int, timeout: int = 2) -> bool:
    probe = f"timeout {timeout} bash -c '</dev/tcp/{address}/{port}'"
    return peer.run(probe).rc == 0


def main_pid(host, service: str) -> int:
    pid = 0

    def running() -> bool:
        nonlocal pid
        pid = int(host.check_output(f"systemctl show -p MainPID --value {service}"))
        return pid > 0

    assert wait_for(running, timeout=30), f"{service} has no main process"
    return pid


def process_limits(host, pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {'Max open files': (soft, hard), ...}."""
    limits = {}
    for line in host.file(f"/proc/{pid}/limits").content_string.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
        limits[name] = (soft, hard)
    return limits


def unit_exposure(host, unit: str) -> float:
    """The overall exposure `systemd-analyze security` gives the unit as systemd loaded it
    (drop-ins included): 0 is the tightest sandbox, 10 none at all."""
    output = host.check_output(f"LC_ALL=C systemd-analyze security --no-pager {unit}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"systemd-analyze gave no exposure for {unit}: {output[-500:]}"
    return float(match.group(1))


def assert_sandboxed(host, unit: str, tier: str, running: bool = True) -> None:
    """The unit scores within its tier's bound ("app" or "data"); when it runs, its main
    process really got the sandbox: no capability, no new privileges, a system call filter."""
    bound = EXPOSURE_BOUNDS[tier]
    exposure = unit_exposure(host, unit)
    assert exposure <= bound, f"{unit}: exposure {exposure} is above {bound}"
    if not running:
        return
    status = dict(
        line.split(":", 1)
        for line in host.file(f"/proc/{main_pid(host, unit)}/status").content_string.splitlines()
        if ":" in line
    )
    assert status["NoNewPrivs"].strip() == "1", unit
    assert status["Seccomp"].strip() == "2", unit  # a filter is installed
    assert int(status["CapBnd"], 16) == 0, unit
    assert int(status["CapEff"], 16) == 0, unit
