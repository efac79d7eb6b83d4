"""The app hosts' links to PostgreSQL, Redis, RabbitMQ, MongoDB and Elasticsearch: encrypted,
checked against the internal CA, and a client that tries plaintext (or trusts another CA, or
brings no certificate to the search proxy) gets nowhere.

Then every port the data tiers' processes really listen on beyond loopback (from `ss` on the
host, not from their configuration) is probed: each one completes a TLS handshake only with the
internal CA and a name the kit issued, and answers plaintext with the server's own refusal.

Read-only, but for one destructive check that adds a plaintext listener to show the probe
finds it: the others open connections (from an app host, with the app's own libraries and
settings, or from the data host itself) and write nothing."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

import pytest
from conftest import address_of, internal_get, main_pid, render, var_of, wait_for

testinfra_hosts = ["ansible://app"]
ROLE = "app"

# Each probe prints one JSON object; "error" holds the exception's class and text.
PROBE = """
import json
from django.conf import settings
def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
"""


@pytest.fixture(scope="module")
def probe(host):
    def run(body: str) -> dict:
        code = PROBE + body
        out = host.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(code)}")
        return json.loads(out.strip().splitlines()[-1])

    return run


def needs(v, name: str) -> None:
    if not v(name):
        pytest.skip(f"{name} is false in this inventory")


def test_the_app_reaches_postgresql_over_verified_tls_only(v, probe):
    needs(v, "app_postgres_tls")
    result = probe("""
import psycopg
from django.db import connection
db = settings.DATABASES["default"]
def live():
    with connection.cursor() as cursor:
        cursor.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return list(cursor.fetchone())
def plain():
    psycopg.connect(host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"],
                    password=db["PASSWORD"], sslmode="disable", connect_timeout=5).close()
    return "connected"
print(json.dumps({"options": db["OPTIONS"], "live": attempt(live), "plain": attempt(plain)}))
""")
    assert result["options"]["sslmode"] == "verify-full"
    assert result["options"]["sslrootcert"] == v("app_tls_ca_certificate")
    assert "ok" in result["live"], result
    assert result["live"]["ok"][0] is True, result
    assert result["live"]["ok"][1] in ("TLSv1.2", "TLSv1.3"), result
    # pg_hba.conf turns a plaintext login away before the password is even asked for.
    assert "no encryption" in result["plain"].get("error", ""), result


def test_the_app_reaches_redis_over_verified_tls_only(v, probe):
    needs(v, "app_redis_tls")
    result = probe("""
import redis
from django_redis import get_redis_connection
def live():
    client = get_redis_connection("default")
    kwargs = client.connection_pool.connection_kwargs
    return [client.ping(), client.connection_pool.connection_class.__name__,
            kwargs.get("ssl_check_hostname"), kwargs.get("ssl_ca_certs")]
common = dict(host=settings.REDIS_HOST, port=settings.REDIS_PORT, username=settings.REDIS_USER,
              password=settings.REDIS_PASSWORD, socket_timeout=5, socket_connect_timeout=5)
def plain():
    return redis.Redis(**common).ping()
def other_ca():
    return redis.Redis(**common, ssl=True, ssl_cert_reqs="required",
                       ssl_ca_certs="/etc/ssl/certs/ca-certificates.crt").ping()
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    expected = [True, "SSLConnection", True, v("app_tls_ca_certificate")]
    assert "ok" in result["live"], result
    assert result["live"]["ok"] == expected, result
    assert "error" in result["plain"], result
    # Only the internal CA vouches for the server: a client trusting the public CAs refuses it.
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result


def test_the_app_reaches_rabbitmq_over_verified_tls_only(v, probe):
    needs(v, "app_rabbitmq_tls")
    result = probe("""
import ssl
from kombu import Connection
def connect(url, use_ssl):
    with Connection(url, connect_timeout=5, ssl=use_ssl) as conn:
        conn.connect()
        return conn.transport_cls
url = settings.CELERY_BROKER_URL
def live():
    return [url.split(":", 1)[0], connect(url, settings.CELERY_BROKER_USE_SSL)]
def plain():
    return connect("amqp" + url[len("amqps"):], False)
def other_ca():
    options = dict(settings.CELERY_BROKER_USE_SSL, ca_certs="/etc/ssl/certs/ca-certificates.crt")
    return connect(url, options)
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"][0] == "amqps", result
    assert "error" in result["plain"], result
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result


def test_the_app_reaches_elasticsearch_only_through_its_tls_proxy_with_a_certificate(v, probe):
    if not str(v("app_elasticsearch_url")).startswith("https://"):
        pytest.skip("app_elasticsearch_url is not https in this inventory")
    result = probe("""
import requests
from catalogue.search.client import get_client
url = settings.ELASTICSEARCH_URL
def live():
    return get_client().request("GET", "/")["version"]["number"]
def no_certificate():
    return requests.get(url, verify=settings.TLS_CA_FILE, timeout=5).status_code
def plain():
    return requests.get("http" + url[len("https"):], timeout=5).status_code
print(json.dumps({"live": attempt(live), "no_certificate": attempt(no_certificate),
                  "plain": attempt(plain)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"].startswith("5."), result
    # The proxy ends the handshake of a client without a certificate of the internal CA.
    # (TLS 1.3 may report it on the first read, as a reset rather than an SSL error.)
    assert "Error" in result["no_certificate"].get("error", ""), result
    assert "error" in result["plain"], result


def test_the_app_reaches_mongodb_over_verified_tls_only(v, probe):
    needs(v, "app_mongodb_tls")
    result = probe("""
import pymongo
from catalogue.documents import MongoStore
common = dict(host=settings.MONGODB_HOST, port=settings.MONGODB_PORT,
              username=settings.MONGODB_USER, password=settings.MONGODB_PASSWORD,
              authSource=settings.MONGODB_AUTH_SOURCE, serverSelectionTimeoutMS=5000,
              directConnection=True)
def live():
    return MongoStore().client.admin.command("ping")["ok"]
def plain():
    return pymongo.MongoClient(**common).admin.command("ping")["ok"]
def other_ca():
    return pymongo.MongoClient(**common, tls=True,
                               tlsCAFile="/etc/ssl/certs/ca-certificates.crt").admin.command("ping")
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"] == 1.0, result
    assert "error" in result["plain"], result
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result


# --- every listening port of the data tiers -------------------------------------------------

# A data tier's processes: its listeners are those of these commands or of these accounts, so
# a second listener the service opens, or anything its account starts, is probed as well.
TIERS = {
    "db": ({"postgres"}, {"postgres"}),
    "cache": ({"redis-server"}, {"redis"}),
    "broker": ({"beam.smp", "epmd"}, {"rabbitmq", "epmd"}),
    "docs": ({"mongod", "secantusd-py", "ferretdb"}, {"mongodb"}),
    "search": ({"java", "stunnel4", "stunnel"}, {"elasticsearch", "stunnel4"}),
}
# epmd only maps Erlang node names to ports (its own, fixed port; the rabbitmq role's socket
# unit binds it) and has no encryption in its protocol: it carries no data.
EPMD = ("epmd", 4369)
PKI_DIR = "/etc/ssl/stackkit"
_OWNER = re.compile(r'\("([^"]+)",pid=(\d+),')

# Run as root on the prober, with its certificate, against each ADDRESS,PORT,MODE[,NAME] given:
# a TLS handshake trusting the internal CA only, with the name the kit issued (NAME, else the
# listener's address); the same with the public CAs, and with a name the kit did not issue; then
# plaintext, and the server's answer. Modes: `postgresql` negotiates TLS inside its own protocol
# (SSLRequest) and opens plaintext with a startup message; `erlang` opens plaintext as an Erlang
# node does (inet_tcp_dist's send_name: length, 'N', flags, creation, name); `http` with a
# request, and tries a handshake without a client certificate too (`anonymous`: with TLS 1.3 a
# server that wants one says so on the first read); `tls` with a line of text. The others speak
# TLS from the first byte. Prints one JSON list.
PORT_PROBE = r"""
import json, socket, ssl, struct, sys
from concurrent.futures import ThreadPoolExecutor
pki = sys.argv[1]
def startup(user, database):
    pairs = b"".join(k + b"\0" + v + b"\0" for k, v in ((b"user", user), (b"database", database)))
    body = struct.pack("!I", 196608) + pairs + b"\0"
    return struct.pack("!I", len(body) + 4) + body
def erlang_name():
    node = b"stackkit-probe@" + socket.gethostname().split(".")[0].encode()
    body = b"N" + struct.pack("!QIH", 0x0D07DF7FBD, 0, len(node)) + node
    return struct.pack("!H", len(body)) + body
HELLO = {
    "postgresql": lambda: startup(b"catalogue_app", b"catalogue"),
    "erlang": erlang_name,
    "http": lambda: b"GET / HTTP/1.1\r\nHost: stackkit-probe\r\nConnection: close\r\n\r\n",
    "tls": lambda: b"PING\r\n",
}
def read_all(sock):
    answer, closed = b"", False
    try:
        while len(answer) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                closed = True
                break
            answer += chunk
    except TimeoutError:
        pass
    except OSError:
        closed = True
    return answer, closed
def handshake(address, port, mode, cafile, name, certificate=True):
    context = ssl.create_default_context(cafile=cafile)
    if certificate:
        context.load_cert_chain(f"{pki}/host.crt", f"{pki}/host.key")
    try:
        raw = socket.create_connection((address, port), timeout=5)
    except OSError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    try:
        if mode == "postgresql":
            raw.sendall(struct.pack("!II", 8, 80877103))
            offered = raw.recv(64)
            if offered != b"S":
                return {"error": f"no TLS offered: {offered!r}"}
        with context.wrap_socket(raw, server_hostname=name) as tls:
            if certificate:
                return {"ok": tls.version()}
            tls.sendall(HELLO[mode]())
            answer, closed = read_all(tls)
            return {"ok": tls.version(), "answer": answer.hex(), "closed": closed}
    except (OSError, ssl.SSLError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        raw.close()
def plaintext(address, port, mode):
    try:
        sock = socket.create_connection((address, port), timeout=5)
    except OSError as error:
        return {"answer": "", "closed": False, "error": str(error)}
    with sock:
        sock.sendall(HELLO[mode]())
        answer, closed = read_all(sock)
    return {"answer": answer.hex(), "closed": closed}
def attempts(target):
    address, port, mode, *name = target.split(",")
    on, name = (address, int(port), mode), (name or [address])[0]
    tries = {
        "kit": lambda: handshake(*on, f"{pki}/ca.crt", name),
        "other_ca": lambda: handshake(*on, "/etc/ssl/certs/ca-certificates.crt", name),
        "other_name": lambda: handshake(*on, f"{pki}/ca.crt", "not-issued-by-the-kit.invalid"),
        "plain": lambda: plaintext(*on),
    }
    if mode == "http":
        tries["anonymous"] = lambda: handshake(*on, f"{pki}/ca.crt", name, certificate=False)
    return tries
# All at once: a port that leaves a client waiting costs its timeout once, not once a try.
with ThreadPoolExecutor(32) as pool:
    futures = [{k: pool.submit(f) for k, f in attempts(t).items()} for t in sys.argv[2:]]
    print(json.dumps([{k: f.result() for k, f in tries.items()} for tries in futures]))
"""


def probe_ports(prober, targets: list[str]) -> list[dict]:
    """PORT_PROBE run as root on `prober` with its certificate, one result per target
    ("ADDRESS,PORT,MODE[,NAME]")."""
    command = "python3 -c %s %s" + " %s" * len(targets)
    return json.loads(prober.check_output(command, PORT_PROBE, PKI_DIR, *targets))


@dataclass(frozen=True)
class Port:
    address: str
    port: int
    process: str
    account: str


def tier_listeners(server, tier: str) -> list[Port]:
    """The TCP ports the tier's processes listen on beyond loopback, from `ss` on the host."""
    commands, accounts = TIERS[tier]
    users = dict(line.split() for line in server.check_output("ps -eo pid=,user:64=").splitlines())
    found = []
    for line in server.check_output("ss -H -ltnp").splitlines():
        address, port = line.split()[3].rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        owners = _OWNER.findall(line)
        if not owners or address.startswith("127.") or address == "::1":
            continue
        # systemd holds the sockets of a socket-activated service too: the service owns them.
        command, pid = next(((c, p) for c, p in owners if c != "systemd"), owners[0])
        account = users.get(pid, "")
        if command in commands or account in accounts:
            found.append(Port(address, int(port), command, account))
    return found


def mode_of(listener: Port, erlang_ports: frozenset[int] = frozenset()) -> str:
    if listener.process == "postgres":
        return "postgresql"
    return "erlang" if listener.port in erlang_ports else "tls"


def tls_only_problems(
    prober, listeners: list[Port], erlang_ports: frozenset[int] = frozenset()
) -> list[list[str]]:
    """Why each listener does not hold to TLS with the internal CA only, tried from `prober`
    with its own certificate; an empty list for one that does. `erlang_ports` speak Erlang's
    distribution, whose plaintext opening is a node's name."""
    if not listeners:
        return []
    modes = [mode_of(p, erlang_ports) for p in listeners]
    targets = [f"{p.address},{p.port},{mode}" for p, mode in zip(listeners, modes, strict=True)]
    results = probe_ports(prober, targets)
    return [why_not_tls_only(mode, r) for mode, r in zip(modes, results, strict=True)]


def why_not_tls_only(mode: str, result: dict) -> list[str]:
    plain = dict(result["plain"])
    answer = plain["answer"] = bytes.fromhex(plain["answer"])[:240]
    problems = []
    if "ok" not in result["kit"]:
        problems.append(f"no TLS handshake with the internal CA and its name: {result['kit']}")
    for attempt in ("other_ca", "other_name"):
        if "CERTIFICATE_VERIFY_FAILED" not in result[attempt].get("error", ""):
            problems.append(f"{attempt} was not refused for its certificate: {result[attempt]}")
    if mode == "postgresql":
        # PostgreSQL's own ErrorResponse: pg_hba.conf has no entry without encryption.
        if not (answer[:1] == b"E" and b"no encryption" in answer):
            problems.append(f"PostgreSQL did not refuse a plaintext login: {answer!r}")
    elif not plain["closed"] or answer[:1] not in (b"", b"\x15"):
        # A TLS server answers plaintext with a TLS alert record or by closing at once: an
        # answer in another protocol, or silence on an open connection, is neither.
        problems.append(f"plaintext was not refused as by a TLS server: {plain}")
    return problems


def unencrypted_ports(server, tier: str, prober) -> dict[int, str]:
    """The tier's listeners on the server that fail the TLS checks: {port: why}. Each is tried
    from `prober`, but the brokers' Erlang distribution, which the firewall opens to the other
    brokers only: that one is tried from the broker itself."""
    local = set()
    exempt = {EPMD}
    if tier == "broker":
        local.add(("beam.smp", int(var_of(server, "rabbitmq_dist_port", "rabbitmq"))))
        # RabbitMQ's own metrics endpoint (rabbitmq_prometheus, with a monitor group) is plain
        # HTTP, as every exporter's scrape is (docs/monitoring.md): read-only figures, no
        # message or credential, and the firewall admits the monitor hosts only.
        if var_of(server, "rabbitmq_prometheus_enabled", "rabbitmq"):
            exempt.add(("beam.smp", int(var_of(server, "rabbitmq_prometheus_port", "rabbitmq"))))
    listeners = [p for p in tier_listeners(server, tier) if (p.process, p.port) not in exempt]
    from_server = [p for p in listeners if (p.process, p.port) in local]
    from_prober = [p for p in listeners if p not in from_server]
    tried = list(zip(from_prober, tls_only_problems(prober, from_prober), strict=True))
    erlang = frozenset(port for _, port in local)
    tried += zip(from_server, tls_only_problems(server, from_server, erlang), strict=True)
    return {p.port: f"{p}: {'; '.join(why)}" for p, why in tried if why}


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_every_port_the_tier_listens_on_takes_tls_with_the_kits_ca_only(tier, inventory_hosts):
    servers = inventory_hosts(tier)
    if not servers:
        pytest.skip(f"no {tier} host in this inventory")
    for server in servers:
        assert tier_listeners(server, tier), f"no {tier} process listens on {server.backend.host}"
        # From an app host, the clients these ports serve: its address is the one pg_hba.conf
        # and the firewall let in, so PostgreSQL's answer is about encryption, not the source.
        found = unencrypted_ports(server, tier, (inventory_hosts("app") or [server])[0])
        assert not found, f"{server.backend.host}: {found}"


# --- nginx -> gunicorn ------------------------------------------------------------------------


def web_hosts_with_upstream_tls(inventory_hosts) -> list:
    webs = inventory_hosts("web")
    if not webs:
        pytest.skip("no web host in this inventory")
    if not all(var_of(web, "gunicorn_tls_enabled", "gunicorn") for web in webs):
        pytest.skip("gunicorn_tls_enabled is false here: nginx speaks plain HTTP to gunicorn")
    return webs


def gunicorn_target(web, upstream_host: str | None = None) -> str:
    """The probe's target for a gunicorn: its address and port, with the name nginx checks."""
    address = upstream_host or address_of(web)
    port = var_of(web, "gunicorn_port", "gunicorn")
    return f"{address},{port},http,{var_of(web, 'nginx_upstream_tls_name', 'nginx')}"


def test_gunicorn_refuses_plaintext_and_clients_without_a_certificate_of_the_kits_ca(
    inventory_hosts,
):
    """From each web host (the firewall admits the web tier only), against its own gunicorn: a
    handshake as nginx makes it succeeds; one trusting the public CAs or checking another name
    fails on gunicorn's certificate; a plaintext request gets no HTTP answer, only the
    connection closed; and a client without a certificate of the internal CA is refused."""
    for web in web_hosts_with_upstream_tls(inventory_hosts):
        (result,) = probe_ports(web, [gunicorn_target(web)])
        assert not why_not_tls_only("http", result), (web.backend.host, result)
        assert not bytes.fromhex(result["plain"]["answer"]).startswith(b"HTTP/"), result
        anonymous = result["anonymous"]
        if var_of(web, "gunicorn_tls_client_auth", "gunicorn"):
            # TLS 1.3 finishes the handshake and reports the refusal on the first read.
            assert "error" in anonymous or not anonymous["answer"], (web.backend.host, result)
        else:
            assert bytes.fromhex(anonymous.get("answer", "")).startswith(b"HTTP/1.1 "), result


def site_directives(config: str) -> dict[str, set[str]]:
    """Every value each proxy directive has in nginx's configuration."""
    found: dict[str, set[str]] = {}
    for name, value in re.findall(r"^\s*(proxy_\w+)\s+([^;]*);", config, re.MULTILINE):
        found.setdefault(name, set()).add(value.strip())
    return found


def test_nginx_verifies_every_gunicorn_against_the_internal_ca_and_one_name(inventory_hosts):
    """In the configuration nginx runs (`nginx -T`): https to the upstream, verification on,
    against a file that holds the internal CA alone, under the one name nginx checks every
    server by, with this host's certificate to show and TLS sessions reused. Then each upstream
    server, tried from this host with nginx's own CA file and name, passes that check, and fails
    it under another name or the public CAs; a request through nginx reaches gunicorn and leaves
    a kept TLS connection to the upstream."""
    for web in web_hosts_with_upstream_tls(inventory_hosts):
        nginx = lambda name, web=web: var_of(web, name, "nginx")  # noqa: E731
        config = web.check_output("nginx -T 2>/dev/null")
        found = site_directives(config)
        assert found["proxy_pass"], "no proxy_pass"
        assert all(p.startswith("https://") for p in found["proxy_pass"]), found["proxy_pass"]
        assert found.get("proxy_ssl_verify") == {"on"}, found
        assert found.get("proxy_ssl_name") == {nginx("nginx_upstream_tls_name")}, found
        assert found.get("proxy_ssl_verify_depth") == {
            str(nginx("nginx_upstream_tls_verify_depth"))
        }
        assert found.get("proxy_ssl_session_reuse") == {"on"}, found
        assert found.get("proxy_ssl_certificate") == {nginx("nginx_upstream_tls_certificate")}
        (trusted,) = found["proxy_ssl_trusted_certificate"]
        assert trusted == nginx("nginx_upstream_tls_ca_certificate")
        ca = web.file(trusted).content_string
        assert ca.count("BEGIN CERTIFICATE") == 1, f"{trusted} trusts more than the internal CA"
        assert ca.strip() == str(render(web, "pki_ca_certificate")).strip()

        servers = [s.rsplit(":", 1)[0] for s in nginx("nginx_upstream_servers")]
        results = probe_ports(web, [gunicorn_target(web, server) for server in servers])
        for server, result in zip(servers, results, strict=True):
            assert result["kit"].get("ok") in ("TLSv1.2", "TLSv1.3"), (server, result)
            for attempt in ("other_ca", "other_name"):
                assert "CERTIFICATE_VERIFY_FAILED" in result[attempt].get("error", ""), (
                    server,
                    attempt,
                    result,
                )

        port = var_of(web, "gunicorn_port", "gunicorn")
        url = f"https://127.0.0.1:{nginx('nginx_tls_port')}/healthz"
        assert internal_get(web, url)["status"] == 200
        if nginx("nginx_upstream_keepalive"):
            kept = web.check_output(f"ss -Htnp state established '( dport = :{port} )'")
            assert '"nginx"' in kept, f"no kept connection from nginx to gunicorn: {kept!r}"


# Speaks plaintext on the data host's private address as the tier's account: the same check
# must find it among the tier's listeners and fail it.
PLAINTEXT_SERVER = r"""
import socket, sys
server = socket.create_server((sys.argv[1], 0))
while True:
    client, _ = server.accept()
    with client:
        client.settimeout(5)
        try:
            client.sendall(b"+PLAINTEXT " + client.recv(4096)[:16])
        except OSError:
            pass
"""


@pytest.mark.destructive
@pytest.mark.parametrize("tier", sorted(TIERS))
def test_a_plaintext_listener_of_the_tier_fails_the_port_check(tier, inventory_hosts):
    servers = inventory_hosts(tier)
    if not servers:
        pytest.skip(f"no {tier} host in this inventory")
    server = servers[0]
    before = tier_listeners(server, tier)
    account = before[0].account
    unit = f"stackkit-plaintext-{tier}"
    server.run(f"systemctl stop {unit}")
    server.check_output(
        "systemd-run --quiet --unit %s -p User=%s -p RuntimeMaxSec=120 python3 -c %s %s",
        unit, account, PLAINTEXT_SERVER, address_of(server),
    )  # fmt: skip
    try:
        main_pid(server, unit)
        added: list[Port] = []

        def listening() -> bool:
            added[:] = [p for p in tier_listeners(server, tier) if p not in before]
            return bool(added)

        assert wait_for(listening, timeout=15), f"no plaintext listener started as {account}"
        # From the data host itself: the firewall keeps the new port from every other host.
        found = unencrypted_ports(server, tier, server)
        assert added[0].port in found, found
        assert "no TLS handshake with the internal CA" in found[added[0].port]
        assert "+PLAINTEXT" in found[added[0].port]
    finally:
        server.run(f"systemctl stop {unit}")
