"""Shared helpers for the testinfra suites.

Each suite targets one inventory group through ``testinfra_hosts`` and runs unchanged
against a molecule scenario's hosts or any inventory (``make verify INVENTORY=...``).
Expected values come from the inventory as Ansible renders it, falling back to the role's
defaults, never from constants repeated here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container --quiet").rc == 0


def private_address_expression(prefix: str = "") -> str:
    """The address a host's services bind and the tiers talk over, as the roles' defaults take
    it: the inventory's private_address, else ansible_host. `prefix` picks another host's
    variables, e.g. "hostvars['db1']."."""
    return (
        f"{prefix}private_address | default({prefix}ansible_host)"
        f" | default({prefix}inventory_hostname)"
    )


def address_of(host) -> str:
    """The host's private address (see private_address_expression)."""
    return render(host, private_address_expression())


@dataclass(frozen=True)
class Listener:
    proto: str  # tcp or udp
    address: str  # "0.0.0.0", "::" and "*" are wildcards
    port: int
    process: str  # the command name ss reports, "" when the socket has no process here

    @property
    def is_wildcard(self) -> bool:
        return self.address in ("0.0.0.0", "::", "*")

    @property
    def is_loopback(self) -> bool:
        return not self.is_wildcard and ipaddress.ip_address(self.address).is_loopback


def listeners(host) -> list[Listener]:
    """Every listening TCP socket and bound UDP socket of the host, from `ss`."""
    found = []
    for line in host.check_output("ss -H -tuln -p").splitlines():
        fields = line.split()
        address, port = fields[4].rsplit(":", 1)
        process = re.search(r'users:\(\("([^"]+)"', line)
        address = address.strip("[]").split("%")[0]
        found.append(Listener(fields[0], address, int(port), process.group(1) if process else ""))
    return found


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
