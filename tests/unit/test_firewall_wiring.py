"""The firewall the wiring opens follows the ports the roles listen on.

The base play writes every host's firewall before any tier's role runs, so the wiring cannot
read a role's defaults: each rule names the role's port variable, with that role's default. An
inventory that moves a service to another port moves its firewall rule with it; a literal port
would leave the service unreachable and the old port open."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackkit.inventory import PlayVars

ROOT = Path(__file__).resolve().parents[2]
HOSTS = {
    "all": {
        "children": {
            "web": {"hosts": {"web1": {"ansible_host": "10.0.1.11"}}},
            "worker": {"hosts": {"worker1": {"ansible_host": "10.0.1.21"}}},
            "app": {"children": {"web": {}, "worker": {}}},
            "db": {"hosts": {"db1": {"ansible_host": "10.0.2.11"}}},
            "cache": {"hosts": {"cache1": {"ansible_host": "10.0.2.21"}}},
            "docs": {"hosts": {"docs1": {"ansible_host": "10.0.4.11"}}},
            "search": {"hosts": {"search1": {"ansible_host": "10.0.3.11"}}},
            "broker": {"hosts": {"broker1": {"ansible_host": "10.0.5.11"}}},
            "monitor": {"hosts": {"cache1": {}}},
        }
    }
}
# (group of the inventory, variable, role's default, a host of the group)
PORTS = [
    ("web", "gunicorn_port", 8000, "web1"),
    ("web", "nginx_tls_port", 443, "web1"),
    ("db", "postgresql_port", 5432, "db1"),
    ("cache", "redis_port", 6379, "cache1"),
    ("docs", "mongodb_port", 27017, "docs1"),
    ("search", "elasticsearch_proxy_port", 9200, "search1"),
    ("monitor", "monitoring_prometheus_port", 9090, "cache1"),
    ("db", "monitoring_postgres_exporter_port", 9187, "db1"),
    ("cache", "monitoring_redis_exporter_port", 9121, "cache1"),
    ("search", "monitoring_elasticsearch_exporter_port", 9114, "search1"),
    ("broker", "rabbitmq_prometheus_port", 15692, "broker1"),
    ("web", "monitoring_nginx_exporter_port", 9113, "web1"),
]


def firewall_rules(tmp_path: Path, hostname: str, group_vars: dict, hosts=HOSTS) -> list[dict]:
    # A directory of its own each time: Ansible caches what it has read by path.
    inventory = tmp_path / f"inventory{len(list(tmp_path.iterdir()))}"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    for group, values in group_vars.items():
        (inventory / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump(values))
    plays = PlayVars(str(inventory), vault=False)
    return plays.value(hostname, "common_firewall_allowed_stack", role="common")


def firewall_ports(tmp_path: Path, hostname: str, group_vars: dict) -> set[int]:
    return {int(rule["port"]) for rule in firewall_rules(tmp_path, hostname, group_vars)}


@pytest.mark.parametrize(("group", "name", "default", "host"), PORTS)
def test_a_rule_follows_its_roles_port(tmp_path, group, name, default, host):
    assert default in firewall_ports(tmp_path, host, {})
    moved = firewall_ports(tmp_path, host, {group: {name: default + 10000}})
    assert default + 10000 in moved
    assert default not in moved


def test_the_role_defaults_are_the_rules_defaults():
    """The wiring's fallback is each role's own default, so an untouched inventory opens the
    ports its services listen on."""
    for _, name, default, _ in PORTS:
        role = next(
            role
            for role in (ROOT / "roles").iterdir()
            if name in yaml.safe_load((role / "defaults/main.yml").read_text() or "{}")
        )
        assert yaml.safe_load((role / "defaults/main.yml").read_text())[name] == default, name


def firewall_sources(tmp_path: Path, group_vars: dict, hosts=HOSTS) -> dict[int, list[str]]:
    """The sources each port of web1 admits."""
    rules = firewall_rules(tmp_path, "web1", group_vars, hosts)
    return {int(rule["port"]): [str(source) for source in rule["sources"]] for rule in rules}


def test_nginx_admits_anyone_by_default(tmp_path):
    sources = firewall_sources(tmp_path, {})
    assert sources[80] == ["any"]
    assert sources[443] == ["any"]


def test_behind_a_balancer_https_admits_the_monitor_hosts_probe(tmp_path):
    """With stack_public_sources limited to a load balancer, the monitor hosts' blackbox
    exporter must still reach each web host's HTTPS port; plain HTTP (a redirect) stays the
    balancer's."""
    sources = firewall_sources(tmp_path, {"web": {"stack_public_sources": ["192.0.2.10"]}})
    assert sources[80] == ["192.0.2.10"]
    assert sources[443] == ["192.0.2.10", "10.0.2.21"]  # cache1 is the monitor host


def test_without_a_monitor_group_https_admits_the_balancer_only(tmp_path):
    hosts = {"all": {"children": {**HOSTS["all"]["children"], "monitor": {"hosts": {}}}}}
    sources = firewall_sources(tmp_path, {"web": {"stack_public_sources": ["192.0.2.10"]}}, hosts)
    assert sources[443] == ["192.0.2.10"]


def test_gunicorn_admits_the_nginx_and_monitor_hosts_only(tmp_path):
    """The monitor hosts read the app's /metrics from gunicorn directly."""
    assert firewall_sources(tmp_path, {})[8000] == ["10.0.1.11", "10.0.2.21"]


def test_without_a_monitor_group_gunicorn_admits_the_nginx_hosts_only(tmp_path):
    hosts = {"all": {"children": {**HOSTS["all"]["children"], "monitor": {"hosts": {}}}}}
    assert firewall_sources(tmp_path, {}, hosts)[8000] == ["10.0.1.11"]
