"""The elasticsearch role, on search hosts: a running node on Java 8, as its own user, with
the configured limits and heap, that indexes and finds documents and holds the templates."""

from __future__ import annotations

import json
import re
import shlex
import uuid

import pytest
import yaml
from conftest import assert_sandboxed, wait_for

testinfra_hosts = ["ansible://search"]
ROLE = "elasticsearch"


@pytest.fixture
def settings(host, v) -> dict:
    """elasticsearch.yml as rendered (test_elasticsearch_config holds it to the inventory)."""
    text = host.file(f"{v('elasticsearch_conf_dir')}/elasticsearch.yml").content_string
    return yaml.safe_load(text)


@pytest.fixture
def heap(host, v) -> str:
    """The heap jvm.options sets (test_elasticsearch_config holds it to the inventory)."""
    options = host.file(f"{v('elasticsearch_conf_dir')}/jvm.options").content_string.split()
    return next(o for o in options if o.startswith("-Xmx"))[4:]


@pytest.fixture
def es(host, settings):
    """es(method, path, body=None) -> parsed JSON, through curl on the node itself."""
    base = f"http://{settings['http.host']}:{settings['http.port']}"

    def call(method: str, path: str, body: dict | None = None):
        # The host's own Python: the role installs no HTTP client.
        script = (
            "import sys, urllib.request as u; d = sys.stdin.buffer.read() or None; "
            f"r = u.Request({base + path!r}, data=d, method={method!r}, "
            "headers={'Content-Type': 'application/json'}); "
            "sys.stdout.write(u.urlopen(r, timeout=30).read().decode())"
        )
        payload = json.dumps(body) if body else ""
        return json.loads(
            host.check_output(
                f"printf %s {shlex.quote(payload)} | python3 -c {shlex.quote(script)}"
            )
        )

    def up() -> bool:
        try:
            return bool(call("GET", "/"))
        except AssertionError:
            return False

    assert wait_for(up, timeout=120)
    return call


@pytest.fixture
def pid(host) -> int:
    return int(host.check_output("systemctl show --property MainPID --value elasticsearch"))


def test_service_runs_as_the_elasticsearch_user(host, v, pid):
    assert host.service("elasticsearch").is_running
    assert pid > 0
    assert host.process.get(pid=pid).user == v("elasticsearch_user")
    user = host.user(v("elasticsearch_user"))
    assert user.shell == "/usr/sbin/nologin"


def test_service_is_sandboxed(host):
    assert_sandboxed(host, "elasticsearch", "data")


def test_node_reports_the_configured_version_on_java_8(es, v):
    assert es("GET", "/")["version"]["number"] == v("elasticsearch_version")
    nodes = es("GET", "/_nodes/jvm")["nodes"].values()
    assert [n["jvm"]["version"].startswith("1.8.0") for n in nodes] == [True] * len(nodes)


def test_open_files_limit_reaches_the_process(host, v, pid):
    limits = host.file(f"/proc/{pid}/limits").content_string
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    assert int(soft) == int(hard) == v("elasticsearch_limit_nofile")


def test_heap_of_the_process_is_the_configured_one(host, pid, heap):
    args = host.file(f"/proc/{pid}/cmdline").content.split(b"\0")
    size = heap
    assert f"-Xms{size}".encode() in args
    assert f"-Xmx{size}".encode() in args


def test_http_listens_on_the_configured_address_only(host, v, settings):
    port = settings["http.port"]
    assert settings["http.host"] == v("elasticsearch_http_host")
    assert host.socket(f"tcp://{settings['http.host']}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


@pytest.mark.destructive
def test_indexed_document_can_be_searched(es):
    sku = uuid.uuid4().hex
    es("PUT", f"/products-test/product/{sku}?refresh=true", {"name": "blue kettle", "sku": sku})
    hits = es("POST", "/products-test/_search", {"query": {"term": {"sku": sku}}})["hits"]
    assert hits["total"] == 1
    assert hits["hits"][0]["_source"]["name"] == "blue kettle"


def test_index_templates_are_in_place(es, v):
    for template in v("elasticsearch_index_templates"):
        found = es("GET", f"/_template/{template['name']}")[template["name"]]
        assert found["template"] == template["body"]["template"]
        assert isinstance(found["version"], int)


def test_cluster_is_at_least_yellow(es):
    assert es("GET", "/_cluster/health")["status"] in ("green", "yellow")
