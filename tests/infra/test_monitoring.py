"""The monitoring role, on the monitor hosts: Prometheus and Alertmanager on the private address,
every inventory host's exporter scraped and up, every alert rule loaded, exporters reachable
from the monitor hosts only, and (on disposable hosts) an alert that fires when an exporter
stops and resolves when it runs again."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import (
    ROOT,
    address_of,
    assert_sandboxed,
    main_pid,
    render,
    tcp_reachable_from,
    wait_for,
)

from stackkit.alerts import ALERT_WITHIN, Alertmanager, get_json, prove

testinfra_hosts = ["ansible://monitor"]
ROLE = "monitoring"
SERVER_UNITS = ["prometheus", "prometheus-alertmanager"]
EXPORTER_UNIT = "prometheus-node-exporter"
# Each fault's fire and resolve times, kept by CI.
FIGURES = ROOT / "build" / "monitoring" / "alert-times.json"
# Prometheus reads sizes in powers of 1024 and prints them as KiB, MiB, GiB...
SIZE_UNITS = {"B": 0, "KB": 1, "MB": 2, "GB": 3, "TB": 4, "PB": 5, "EB": 6}


def prometheus(host, v, path: str):
    answer = get_json(host, f"http://{address_of(host)}:{v('monitoring_prometheus_port')}{path}")
    assert answer["status"] == "success", answer
    return answer["data"]


def size_bytes(size: str) -> int:
    number = size.rstrip("BKMGTPEi")
    unit = size[len(number) :].replace("i", "")
    return int(number) * 1024 ** SIZE_UNITS[unit]


def record(request, fault: str, alert: str, fire: float, resolve: float) -> None:
    """Print the figures and keep them in FIGURES, one entry per fault."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[fault] = {
        "alert": alert,
        "fire_seconds": round(fire, 1),
        "resolve_seconds": round(resolve, 1),
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(
            f"{fault}: {alert} fired after {fire:.1f} s, resolved {resolve:.1f} s after recovery"
        )


@pytest.mark.parametrize("unit", [*SERVER_UNITS, EXPORTER_UNIT])
def test_service_runs_as_prometheus_and_is_sandboxed(host, unit):
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled
    assert host.check_output(f"ps -o user= -p {main_pid(host, unit)}") == "prometheus"
    assert_sandboxed(host, unit, "data")


def test_every_host_runs_a_sandboxed_exporter(host, inventory_hosts):
    """Checked once per monitor host (`host`), so an inventory without one skips it."""
    for peer in inventory_hosts("all"):
        assert peer.service(EXPORTER_UNIT).is_running, peer.backend.host
        assert_sandboxed(peer, EXPORTER_UNIT, "data")


def test_listeners_bind_the_private_address_only(host, v):
    private = address_of(host)
    for name in ("prometheus_port", "alertmanager_port", "node_exporter_port"):
        port = v(f"monitoring_{name}")
        assert wait_for(lambda port=port: host.socket(f"tcp://{private}:{port}").is_listening)
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not host.socket(f"tcp://:::{port}").is_listening, port
    # No Alertmanager gossip port: its cluster listener is off.
    assert not host.socket("tcp://0.0.0.0:9094").is_listening
    assert not host.socket("tcp://:::9094").is_listening


def test_configuration_and_rules_pass_their_checkers(host):
    for command in (
        "promtool check config /etc/prometheus/prometheus.yml",
        "amtool check-config /etc/prometheus/alertmanager.yml",
    ):
        result = host.run(command)
        assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    for path in rule_files(host):
        assert host.file(path).content_string.startswith("#"), f"{path} has no managed header"
        result = host.run(f"promtool check rules {path}")
        assert result.rc == 0, f"{path}: {result.stdout}{result.stderr}"


def rule_files(host) -> list[str]:
    return host.check_output("ls /etc/prometheus/rules/*.yml").split()


def test_the_running_prometheus_keeps_the_configured_retention(host, v):
    flags = prometheus(host, v, "/api/v1/status/flags")
    assert flags["storage.tsdb.retention.time"] == v("monitoring_retention_time")
    assert size_bytes(flags["storage.tsdb.retention.size"]) == size_bytes(
        v("monitoring_retention_size")
    )
    assert flags["web.listen-address"] == f"{address_of(host)}:{v('monitoring_prometheus_port')}"


def test_every_inventory_host_is_scraped_and_up(host, v):
    """The node job's targets are the inventory's hosts (none named in the configuration by
    hand), and every target of every job answers."""
    wanted_nodes = set(v("monitoring_scrape_hosts"))
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    wanted = (
        {("node", name) for name in wanted_nodes}
        | {("prometheus", name) for name in monitors}
        | {("alertmanager", name) for name in monitors}
    )
    seen: dict[tuple[str, str], str] = {}

    def all_up() -> bool:
        seen.clear()
        for target in prometheus(host, v, "/api/v1/targets?state=active")["activeTargets"]:
            key = (target["labels"]["job"], target["labels"]["instance"])
            seen[key] = f"{target['health']} {target['lastError']}".strip()
        return set(seen) == wanted and all(state == "up" for state in seen.values())

    assert wait_for(all_up, timeout=60, interval=2), f"wanted {sorted(wanted)}, got {seen}"


def test_every_rule_file_is_loaded_with_every_alert_healthy(host, v):
    on_disk: dict[str, set[str]] = {}
    for path in rule_files(host):
        groups = yaml.safe_load(host.file(path).content_string)["groups"]
        on_disk[path] = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {"TargetDown", "ServiceDown", "DiskAlmostFull"} <= set().union(*on_disk.values())
    loaded: dict[str, set[str]] = {}
    for group in prometheus(host, v, "/api/v1/rules?type=alert")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            loaded.setdefault(group["file"], set()).add(rule["name"])
    assert loaded == on_disk


def test_exporters_answer_the_monitor_hosts_only(host, v, inventory_hosts):
    """From the monitor host every exporter answers; from a host outside the monitor group,
    another host's exporter is dropped by its firewall."""
    port = v("monitoring_node_exporter_port")
    peers = inventory_hosts("all")
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    for peer in peers:
        assert tcp_reachable_from(host, address_of(peer), port), peer.backend.host
    outsiders = [peer for peer in peers if peer.backend.host not in monitors]
    if len(outsiders) < 2:
        pytest.skip("needs two hosts outside the monitor group")
    source, target = outsiders[0], outsiders[1]
    assert not tcp_reachable_from(source, address_of(target), port), (
        f"{source.backend.host} reaches {target.backend.host}'s exporter"
    )


def prove_alert(host, v, request, victim, unit: str, labels: dict[str, str]) -> None:
    """Stop `unit` on `victim`: the alert with `labels` reaches Alertmanager within
    ALERT_WITHIN s; start it again: the alert is resolved within ALERT_WITHIN s. Records both
    times."""
    manager = Alertmanager(host, address_of(host), v("monitoring_alertmanager_port"))
    fire, resolve = prove(manager, victim, unit, labels, ALERT_WITHIN)
    record(request, f"{unit} stopped on {victim.backend.host}", labels["alertname"], fire, resolve)


def outside_monitor_group(host, v, inventory_hosts, pattern: str) -> list:
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    return [peer for peer in inventory_hosts(pattern) if peer.backend.host not in monitors]


@pytest.mark.destructive
def test_a_stopped_exporter_fires_target_down_and_resolves(host, v, inventory_hosts, request):
    victims = outside_monitor_group(host, v, inventory_hosts, "all")
    if not victims:
        pytest.skip("no host outside the monitor group to stop an exporter on")
    name = victims[0].backend.host
    labels = {"alertname": "TargetDown", "job": "node", "instance": name}
    prove_alert(host, v, request, victims[0], EXPORTER_UNIT, labels)


@pytest.mark.destructive
def test_a_stopped_redis_fires_service_down_and_resolves(host, v, inventory_hosts, request):
    # A monitor host's own exporter reports its Redis as well as any other host's does.
    victims = outside_monitor_group(host, v, inventory_hosts, "cache") or inventory_hosts("cache")
    if not victims:
        pytest.skip("no cache host to stop Redis on")
    name = victims[0].backend.host
    labels = {"alertname": "ServiceDown", "instance": name, "name": "redis-server.service"}
    prove_alert(host, v, request, victims[0], "redis-server", labels)
