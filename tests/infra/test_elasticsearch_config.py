"""The elasticsearch role's rendered configuration, on search hosts: cluster discovery from
the inventory group, the quorum, heap and unit limits. True whether or not the node runs."""

from __future__ import annotations

import pytest
import yaml
from conftest import private_address_expression, render

testinfra_hosts = ["ansible://search"]
ROLE = "elasticsearch"


@pytest.fixture
def settings(host, v) -> dict:
    return yaml.safe_load(
        host.file(f"{v('elasticsearch_conf_dir')}/elasticsearch.yml").content_string
    )


def group_addresses(host, v) -> list[str]:
    names = render(host, f"groups['{v('elasticsearch_cluster_group')}']")
    return [render(host, private_address_expression(f"hostvars[{name!r}].")) for name in names]


def test_nodes_discover_each_other_through_the_group_and_a_lone_node_looks_for_none(
    host, v, settings
):
    nodes = group_addresses(host, v)
    if len(nodes) < 2:
        assert "discovery.zen.ping.unicast.hosts" not in settings
    else:
        assert settings["discovery.zen.ping.unicast.hosts"] == nodes


def test_minimum_master_nodes_is_a_quorum_of_the_group(host, v, settings):
    nodes = group_addresses(host, v)
    if len(nodes) < 2:
        pytest.skip("a single node needs no quorum")
    assert settings["discovery.zen.minimum_master_nodes"] == len(nodes) // 2 + 1


def test_node_settings_come_from_the_inventory(host, v, settings):
    assert settings["transport.host"] == v("elasticsearch_transport_host")
    assert settings["cluster.name"] == v("elasticsearch_cluster_name")
    assert settings["bootstrap.memory_lock"] == v("elasticsearch_memory_lock")
    assert settings["http.port"] == v("elasticsearch_http_port")
    assert settings["path.data"] == v("elasticsearch_data_dir")


def test_configuration_is_readable_by_the_service_only(host, v):
    for name in ("elasticsearch.yml", "jvm.options", "log4j2.properties"):
        f = host.file(f"{v('elasticsearch_conf_dir')}/{name}")
        assert (f.user, f.group, f.mode) == ("root", v("elasticsearch_group"), 0o640), name


def test_heap_is_set_once_with_equal_minimum_and_maximum(host, v):
    options = host.file(f"{v('elasticsearch_conf_dir')}/jvm.options").content_string.split()
    xms = [o for o in options if o.startswith("-Xms")]
    xmx = [o for o in options if o.startswith("-Xmx")]
    assert len(xms) == len(xmx) == 1
    assert xms[0][4:] == xmx[0][4:] == v("elasticsearch_heap_size")
    assert "-Dlog4j2.formatMsgNoLookups=true" in options


def test_unit_carries_the_configured_limits(host, v):
    unit = host.file("/etc/systemd/system/elasticsearch.service").content_string.splitlines()
    assert f"LimitNOFILE={v('elasticsearch_limit_nofile')}" in unit
    assert f"User={v('elasticsearch_user')}" in unit
    assert ("LimitMEMLOCK=infinity" in unit) == v("elasticsearch_memory_lock")


def test_archive_install_is_versioned_behind_a_stable_link(host, v):
    if v("elasticsearch_install_method") != "archive":
        pytest.skip("installed from the APT repository")
    root = v("elasticsearch_archive_root")
    current = host.file(f"{root}/current")
    assert current.is_symlink
    assert current.linked_to == f"{root}/elasticsearch-{v('elasticsearch_version')}"
    assert host.file(f"{root}/current/bin/elasticsearch").mode & 0o111


def test_service_state_is_the_configured_one(host, v):
    service = host.service("elasticsearch")
    assert service.is_enabled == v("elasticsearch_service_enabled")
    assert service.is_running == (v("elasticsearch_service_state") == "started")
