"""Between hosts: each tier reaches only the ports it needs, from the hosts that need them.

Every port a host listens on beyond loopback (from `ss` on the host, not the configuration) is
tried from every other host of the inventory and from the controller: the sources its service
serves connect, every other one is turned away. What each service serves is written here, by
design, not read from the firewall's variables: a rule that let the wrong tier in fails. On
one host only the controller is another source; the multi scenario has three. (A port nothing
serves is closed to other hosts: tests/infra/test_common.py's probe listener.)"""

from __future__ import annotations

import re

from conftest import (
    CONNECT_PROBE,
    address_of,
    render,
    tcp_reachable_from_controller,
    var_of,
)

testinfra_hosts = ["ansible://all"]
ANY = "any"
# Who connects to the port a process listens on: inventory groups, or ANY (the controller
# too). Ports are told apart where one process serves several tiers.
SERVES = {
    "sshd": ANY,  # common_firewall_ssh_sources: the harness reaches every host
    "nginx": ANY,
    "postgres": {"app"},
    "redis-server": {"app"},
    "secantusd-py": {"app"},
    "mongod": {"app"},
    "stunnel4": {"app"},  # Elasticsearch's TLS proxy
    "epmd": {"broker"},
}
# The monitoring role's servers and exporters (`ss` shows 15 characters of a command:
# prometheus, prometheus-aler(tmanager), prometheus-node(-exporter)...): the monitor hosts
# scrape them, and no one else may (playbooks/group_vars/all/firewall.yml).
MONITORING = "prometheus"
_OWNER = re.compile(r'\("([^"]+)",pid=(\d+),')


def served_by(host, process: str, port: int):
    """The sources that must reach `port`, or None when no tier is known to need it."""
    if "web" in groups_of(host) and port == int(var_of(host, "gunicorn_port", "gunicorn")):
        return {"web", "monitor"}  # nginx on every web host; the monitor hosts' scrape of /metrics
    if process == "beam.smp":
        if port == int(var_of(host, "rabbitmq_amqp_port", "rabbitmq")):
            return {"app"}  # AMQPS
        if var_of(host, "rabbitmq_prometheus_enabled", "rabbitmq") and port == int(
            var_of(host, "rabbitmq_prometheus_port", "rabbitmq")
        ):
            return {"monitor"}  # RabbitMQ's own metrics endpoint
        return {"broker"}  # the Erlang distribution
    if process.startswith(MONITORING):
        return {"monitor"}
    return SERVES.get(process)


def groups_of(host) -> set[str]:
    return set(render(host, "group_names"))


def private_listeners(host) -> list[tuple[int, str]]:
    """(port, command) of every TCP socket listening on the private address or a wildcard."""
    private, found = address_of(host), set()
    for line in host.check_output("ss -H -ltnp").splitlines():
        address, port = line.split()[3].rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        if address not in (private, "0.0.0.0", "::", "*"):
            continue
        owners = _OWNER.findall(line)
        command = next((c for c, _ in owners if c != "systemd"), owners[0][0] if owners else "")
        found.add((int(port), command))
    return sorted(found)


def reachable_from(peer, targets: list[str]) -> list[bool]:
    """Which of the targets a process on `peer` connects to, all tried at once."""
    out = peer.check_output("python3 -c %s" + " %s" * len(targets), CONNECT_PROBE, *targets)
    return [errno == "0" for errno in out.split()]


def test_every_listening_port_is_reached_by_the_tiers_it_serves_and_no_other(host, inventory_hosts):
    private = address_of(host)
    peers = [p for p in inventory_hosts("all") if p.backend.host != host.backend.host]
    wrong, ports = [], {}
    for port, process in private_listeners(host):
        serves = served_by(host, process, port)
        if serves is None:
            wrong.append(f"{process} listens on {port}, which no tier needs")
        else:
            ports[port] = serves
    targets = [f"{private}:{port}" for port in ports]
    for peer in peers:
        for (port, serves), reached in zip(
            ports.items(), reachable_from(peer, targets), strict=True
        ):
            must = serves == ANY or bool(serves & groups_of(peer))
            if reached != must:
                wrong.append(f"{peer.backend.host} {'cannot' if must else 'can'} reach {port}")
    for port, serves in ports.items():
        if tcp_reachable_from_controller(private, port) != (serves == ANY):
            wrong.append(f"the controller {'cannot' if serves == ANY else 'can'} reach {port}")
    assert ports, f"nothing listens on {private}"
    assert not wrong, f"{host.backend.host} ({private}): {wrong}"
