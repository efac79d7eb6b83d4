"""Shared helpers for the testinfra suites.

Each suite targets one inventory group through ``testinfra_hosts`` and runs unchanged
against a molecule scenario's hosts or any inventory (``make verify INVENTORY=...``).
Expected values are the variables a play would use on that host (stackkit/inventory.py), never
constants repeated here and never a default the play would not have rendered.

Two kinds of checks share this harness. Read-only ones look at state and write nothing to any
service, stop nothing and start no listener: `make verify` runs only those, on any inventory.
Destructive ones are marked `destructive` (faults, writes, test deploys, backups, probe
listeners); they run only against an inventory whose every host sets `stackkit_disposable: true`
(the local hosts and molecule's scenarios do), and the run is refused before anything is touched
otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shlex
import socket
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import testinfra
from fabric import Connection

from stackkit.alerts import wait_for
from stackkit.clock import clock_skew, clock_warning
from stackkit.inventory import DISPOSABLE, PlayVars
from stackkit.lint.unit_security import APP_BOUND, DATA_BOUND

ROOT = Path(__file__).resolve().parents[2]

# The exposure bounds `make lint` scores the rendered units against (stackkit.lint.unit_security).
EXPOSURE_BOUNDS = {"app": APP_BOUND, "data": DATA_BOUND}

# psql as the superuser, as every superuser session must run in a database where other roles
# create objects: names resolve in pg_catalog (and the session's temporary schema) only, so no
# operator or function they planted is chosen; the app's tables are named with their schema.
SUPERUSER_PSQL = "runuser -u postgres -- env PGOPTIONS='-c search_path=pg_catalog,pg_temp' psql -X"

# Run on a host as `python3 -c CONNECT_PROBE ADDRESS:PORT...`: connects to every target at once and
# prints one errno per target (0: connected). A firewall that drops shows as a timeout.
CONNECT_PROBE = """
import socket, sys
from concurrent.futures import ThreadPoolExecutor
def errno(target):
    address, port = target.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(3)
        return str(sock.connect_ex((address, int(port))))
with ThreadPoolExecutor(16) as pool:
    print(" ".join(pool.map(errno, sys.argv[1:])))
"""


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Molecule sets STACKKIT_TESTS to its scenario name and passes every suite's file
    explicitly: keep only that role's suite. Then refuse destructive checks on hosts that the
    inventory does not call disposable."""
    wanted = os.environ.get("STACKKIT_TESTS", "")
    if wanted:
        names = {name.strip() for name in wanted.split(",")}
        unknown = sorted(names - suite_names())
        if unknown:
            raise pytest.UsageError(
                f"STACKKIT_TESTS names no suite {', '.join(unknown)}: tests/infra has "
                f"{', '.join(sorted(suite_names()))}"
            )
        keep = [item for item in items if item.path.stem.removeprefix("test_") in names]
        dropped = [item for item in items if item not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    refuse_destructive_on_kept_hosts(config, items)


def suite_names() -> set[str]:
    """What STACKKIT_TESTS may name: tests/infra/test_NAME.py."""
    return {path.stem.removeprefix("test_") for path in Path(__file__).parent.glob("test_*.py")}


def refuse_destructive_on_kept_hosts(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs after selection (-m, -k, STACKKIT_TESTS) and before any test: it reads the
    inventory on the controller and contacts no host."""
    destructive = [item.nodeid for item in items if item.get_closest_marker("destructive")]
    if not destructive:
        return
    inventory = inventory_of(config)
    kept = PlayVars(inventory, playbook_dir=PLAYBOOK_DIR).not_disposable()
    if kept:
        raise pytest.UsageError(
            f"refusing to run {len(destructive)} destructive checks (e.g. {destructive[0]}) "
            f"against {inventory}: {', '.join(kept)} do not set {DISPOSABLE}: true. They stop "
            "services, write data and deploy test builds. Run the read-only checks with "
            "-m 'not destructive' (what `make verify` does), or set the variable only in an "
            "inventory of hosts whose data may be lost."
        )


_RESOLVERS: dict[str, PlayVars] = {}
# The directory of the playbook that converged the hosts (its group_vars are part of what the
# play saw): the kit's playbooks/ unless a molecule scenario names its own (molecule/base.yml).
PLAYBOOK_DIR = os.environ.get("STACKKIT_PLAYBOOK_DIR") or None


def inventory_of(config: pytest.Config) -> str:
    inventory = config.option.ansible_inventory
    if not inventory:
        raise pytest.UsageError("name the hosts with --ansible-inventory=PATH")
    return inventory


def resolver(host) -> PlayVars:
    """The variable resolver of the host's inventory, one per run; it gathers each host's
    facts (the setup module, read-only) the first time a role's variables need them."""
    inventory = host.backend.ansible_inventory
    if inventory not in _RESOLVERS:

        def facts(hostname: str) -> dict:
            peer = testinfra.get_host(
                f"ansible://{hostname}", ansible_inventory=inventory, connection="ansible"
            )
            return peer.ansible("ansible.builtin.setup", check=False)

        _RESOLVERS[inventory] = PlayVars(inventory, facts=facts, playbook_dir=PLAYBOOK_DIR)
    return _RESOLVERS[inventory]


def render(host, expression: str):
    """A Jinja expression with the host's inventory variables and facts (no role's defaults)."""
    return resolver(host).render(host.backend.host, expression)


def var_of(host, name: str, role: str):
    """The value of a role variable for `host` as a play applying `role` there renders it;
    an error if neither the role nor the inventory defines it. Ask the host the role runs on:
    another tier's group_vars are not visible from this one."""
    return resolver(host).value(host.backend.host, name, role)


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


class ClockSkewWarning(UserWarning):
    """A host's clock differs from the controller's by more than pki_clock_skew_warn_seconds."""


_CLOCKS_COMPARED: set[str] = set()


@pytest.fixture(autouse=True)
def clock_compared(request) -> None:
    """Before the first check on each host (its TLS checks included), warn, naming the host,
    when its clock is further from the controller's than pki_clock_skew_warn_seconds. Reads
    the host's clock only."""
    if "host" not in request.fixturenames:
        return
    host = request.getfixturevalue("host")
    name = host.backend.get_hostname()
    if name in _CLOCKS_COMPARED:
        return
    _CLOCKS_COMPARED.add(name)
    skew = clock_skew(host)
    if skew is None:  # an unreachable host: its checks say so themselves
        return
    threshold = float(var_of(host, "pki_clock_skew_warn_seconds", "pki"))
    warning = clock_warning(name, skew, threshold)
    if warning:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line(f"WARNING: {warning}", yellow=True)
        warnings.warn(ClockSkewWarning(warning), stacklevel=1)


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


def tcp_reachable_from_controller(address: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_reachable_from(peer, address: str, port: int, timeout: int = 2) -> bool:
    probe = f"timeout {timeout} bash -c '</dev/tcp/{address}/{port}'"
    return peer.run(probe).rc == 0


# Runs on a peer with the python3 every managed host has: one TCP connection from the peer,
# its bytes carried over the SSH session's stdin and stdout.
RELAY = """
import os, select, socket, sys
upstream = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
upstream.settimeout(None)
while True:
    ready = select.select([0, upstream], [], [])[0]
    data = os.read(0, 65536) if 0 in ready else upstream.recv(65536)
    if not data:
        break
    if 0 in ready:
        upstream.sendall(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
"""


def ssh_to(peer) -> Connection:
    """An SSH connection to `peer` as the inventory reaches it (its address, user, port, key)."""
    key = render(
        peer, "ansible_ssh_private_key_file | default(ansible_private_key_file | default(''))"
    )
    return Connection(
        address_of(peer),
        user=render(peer, "ansible_user | default('')") or None,
        port=int(render(peer, "ansible_port | default(22)")),
        connect_kwargs={"key_filename": key} if key else {},
    )


@contextmanager
def ssh_tunnel(peer, address: str, port: int):
    """A loopback port on the controller that `peer`'s sshd forwards to address:port, as
    `ssh -L` does: the operator's way to a monitor host's Prometheus (docs/monitoring.md)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        local = probe.getsockname()[1]
    with (
        ssh_to(peer) as ssh,
        ssh.forward_local(local, remote_port=port, remote_host=address, local_host="127.0.0.1"),
    ):
        # Fabric's tunnel thread listens on the port a moment after the call returns.
        assert wait_for(lambda: tcp_reachable_from_controller("127.0.0.1", local), timeout=15)
        yield local


def sshd_forwards(peer, address: str, port: int) -> bool:
    """Whether `peer`'s sshd opens a forwarding channel (direct-tcpip, what `ssh -L` asks for)
    to address:port; False when it refuses it (AllowTcpForwarding, PermitOpen)."""
    with ssh_to(peer) as ssh:
        ssh.open()
        try:
            channel = ssh.client.get_transport().open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=10
            )
        except paramiko.ChannelException:
            return False
        channel.close()
        return True


@contextmanager
def relay_from(peer, address: str, port: int):
    """A loopback port on the controller whose connections reach address:port from `peer`, so
    a client library on the controller is seen as that peer (its address, its firewall rules)
    while the peer needs nothing the kit does not install. Each connection is a python3 relay
    over SSH (an exec, not port forwarding, which a hardened sshd may refuse)."""
    ssh = ssh_to(peer)
    ssh.open()
    listener = socket.create_server(("127.0.0.1", 0))
    command = f"python3 -c {shlex.quote(RELAY)} {shlex.quote(address)} {port}"
    threads: list[threading.Thread] = []

    def carry(client: socket.socket) -> None:
        channel = ssh.client.get_transport().open_session()
        channel.exec_command(command)
        with client, channel:
            while True:
                ready = select.select([client, channel], [], [], 30)[0]
                if not ready:
                    continue
                data = client.recv(65536) if client in ready else channel.recv(65536)
                if not data:
                    return
                (channel if client in ready else client).sendall(data)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=carry, args=(client,), daemon=True)
            thread.start()
            threads.append(thread)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        ssh.close()
        for thread in threads:
            thread.join(timeout=5)


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


# Run on the web host: the internal endpoints answer loopback (and monitoring) only.
_INTERNAL_GET = r"""
import json, ssl, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Host": "127.0.0.1"})
context = ssl._create_unverified_context()  # loopback: the certificate names the public names
try:
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        status, body = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
print(json.dumps({"status": status, "body": body.decode()}))
"""


def internal_get(web, url: str) -> dict:
    """GET an internal endpoint (/healthz, /readyz, /api/stats) of nginx on the web host
    itself, the only place besides monitoring it answers: {"status": ..., "body": ...}."""
    return json.loads(web.check_output("python3 -c %s %s", _INTERNAL_GET, url))


# Each alert proof's fire and resolve times (test_monitoring, test_app_metrics).
ALERT_TIMES = ROOT / "build" / "monitoring" / "alert-times.json"


def record_alert_times(request, fault: str, alert: str, fire: float, resolve: float) -> None:
    """Print an alert proof's fire and resolve times and keep them in ALERT_TIMES, one entry
    per fault (CI keeps the file)."""
    figures = json.loads(ALERT_TIMES.read_text()) if ALERT_TIMES.exists() else {}
    figures[fault] = {
        "alert": alert,
        "fire_seconds": round(fire, 1),
        "resolve_seconds": round(resolve, 1),
    }
    ALERT_TIMES.parent.mkdir(parents=True, exist_ok=True)
    ALERT_TIMES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(
            f"{fault}: {alert} fired after {fire:.1f} s, resolved {resolve:.1f} s after recovery"
        )
