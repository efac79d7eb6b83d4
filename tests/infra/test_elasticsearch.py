"""The elasticsearch role, on search hosts: a running node on Java 8, as its own user, with
the configured limits and heap, that indexes and finds documents and holds the templates."""

from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import assert_sandboxed, relay_from, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def client_certificate(ca_pem: str, ca_key_pem: str, name: str, directory: Path) -> tuple:
    """A client certificate of the internal CA for `name`, as the pki role issues one."""
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def proxy_answer(local_port: int, server_name: str, ca_pem: str, cert: tuple) -> str:
    """What the proxy answers a GET / from this client certificate (or the error)."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.load_cert_chain(*cert)
    try:
        with (
            socket.create_connection(("127.0.0.1", local_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return tls.recv(64).decode(errors="replace") or "EOF"
    except (ssl.SSLError, OSError) as error:
        return f"{type(error).__name__}: {error}"


@pytest.mark.destructive
def test_the_proxy_takes_the_app_hosts_certificates_and_no_other_of_the_ca(
    host, v, app_host, tmp_path
):
    """Every host of the deployment holds a certificate of the internal CA; the proxy serves
    only the names of elasticsearch_proxy_client_names (the app hosts). Both certificates
    here are issued by the CA for this check (the CA's key is in the inventory), one with an app
    host's name and one with a name that is none of them."""
    names = v("elasticsearch_proxy_client_names")
    if not v("elasticsearch_proxy_enabled") or not names:
        pytest.skip("the search proxy takes any certificate of the CA in this inventory")
    ca_pem, ca_key_pem = v("pki_ca_certificate"), v("pki_ca_private_key")
    address, port = v("elasticsearch_proxy_address"), v("elasticsearch_proxy_port")
    with relay_from(app_host, address, port) as local:
        answers = {
            name: proxy_answer(
                local,
                host.backend.host,
                ca_pem,
                client_certificate(ca_pem, ca_key_pem, name, tmp_path),
            )
            for name in (names[0], "stackkit-not-an-app-host.invalid")
        }
    assert answers[names[0]].startswith("HTTP/1."), answers
    assert not answers["stackkit-not-an-app-host.invalid"].startswith("HTTP/"), answers
