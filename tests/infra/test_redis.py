"""The redis role, on the cache hosts: private bind, ACL users, memory policy, persistence,
limits of the running process, and who may connect."""

from __future__ import annotations

import base64
import shlex

import pytest
from conftest import (
    address_of,
    assert_sandboxed,
    in_container,
    main_pid,
    render,
    tcp_reachable_from,
    tcp_reachable_from_controller,
    wait_for,
)

testinfra_hosts = ["ansible://cache"]
ROLE = "redis"
UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def cli(host, v, *args: str, user: str | None = None, password: str | None = None):
    """redis-cli on the cache host over its private address; the password travels in the env."""
    auth = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    who = f"--user {shlex.quote(user)} " if user else ""
    words = " ".join(shlex.quote(a) for a in args)
    tls = f"--tls --cacert {v('redis_tls_ca_certificate')} " if v("redis_tls_enabled") else ""
    return host.run(
        f"{auth}redis-cli --no-auth-warning {tls}{who}-h {address_of(host)} "
        f"-p {v('redis_port')} {words}"
    )


def admin(host, v, *args: str):
    return cli(host, v, *args, user="default", password=v("redis_default_password"))


def app(host, v, *args: str):
    return cli(host, v, *args, user=v("redis_app_user"), password=v("redis_app_password"))


def resp(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def ping_from(peer, address: str, port: int, user: str, password: str, ca: str = "") -> str:
    """AUTH then PING over a raw TCP connection from another host (no Redis client needed);
    through openssl s_client, checked against the CA `ca`, when Redis speaks TLS only."""
    payload = base64.b64encode(resp("AUTH", user, password) + resp("PING")).decode()
    if ca:
        script = (
            f"(echo {payload} | base64 -d; sleep 2) | openssl s_client -quiet -verify_return_error"
            f" -CAfile {shlex.quote(ca)} -connect {address}:{port} 2>/dev/null | head -c 12"
        )
    else:
        script = (
            f"exec 3<>/dev/tcp/{address}/{port}; echo {payload} | base64 -d >&3; "
            "head -c 12 <&3; exec 3>&-"
        )
    return peer.run(f"timeout 5 bash -c {shlex.quote(script)}").stdout


def test_redis_server_is_running_as_redis(host):
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled
    assert host.check_output(f"ps -o user= -p {main_pid(host, 'redis-server')}") == "redis"


def test_redis_server_is_sandboxed_and_cannot_rewrite_its_configuration(host):
    assert_sandboxed(host, "redis-server", "data")
    writable = host.check_output("systemctl show -p ReadWritePaths --value redis-server").split()
    assert not any(path.lstrip("-").startswith("/etc") for path in writable), writable


def test_redis_listens_on_private_address_and_loopback_only(host, v):
    port = v("redis_port")
    assert wait_for(lambda: host.socket(f"tcp://{address_of(host)}:{port}").is_listening)
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening


def test_unauthenticated_ping_is_refused(host, v):
    out = cli(host, v, "PING")
    assert "NOAUTH" in out.stdout + out.stderr
    assert "PONG" not in out.stdout


def test_wrong_password_is_refused(host, v):
    """Refused by the server, not merely unanswered: the reply names the wrong password."""
    out = cli(host, v, "PING", user=v("redis_app_user"), password="not-the-password")
    assert "WRONGPASS" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "PONG" not in out.stdout


def test_authenticated_ping_works_for_admin_and_app(host, v):
    assert admin(host, v, "PING").stdout.strip() == "PONG"
    assert app(host, v, "PING").stdout.strip() == "PONG"


@pytest.mark.destructive
def test_app_user_can_read_and_write_keys(host, v):
    assert app(host, v, "SET", "stackkit:probe", "42", "EX", "60").stdout.strip() == "OK"
    assert app(host, v, "GET", "stackkit:probe").stdout.strip() == "42"


# Commands that would harm a server whose ACL let them through run on disposable hosts only.
HARMFUL = pytest.mark.destructive


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("FLUSHALL",), marks=HARMFUL),
        pytest.param(("FLUSHDB",), marks=HARMFUL),
        ("CONFIG", "GET", "maxmemory"),
        pytest.param(("CONFIG", "SET", "maxmemory", "0"), marks=HARMFUL),
        pytest.param(("DEBUG", "SLEEP", "0"), marks=HARMFUL),
        pytest.param(("SHUTDOWN", "NOSAVE"), marks=HARMFUL),
        ("ACL", "LIST"),
    ],
    ids=lambda c: " ".join(c),
)
def test_app_user_cannot_run_admin_commands(host, v, command):
    reply = app(host, v, *command)
    out = reply.stdout + reply.stderr
    if command[0] == "DEBUG":
        # Redis 7 also refuses DEBUG to every remote client unless enable-debug-command says so.
        assert "NOPERM" in out or "DEBUG command not allowed" in out, out
    else:
        assert "NOPERM" in out, out
    assert host.service("redis-server").is_running


def test_admin_sees_the_configured_memory_policy_live(host, v):
    lines = admin(host, v, "CONFIG", "GET", "maxmemory-policy").stdout.split()
    assert lines == ["maxmemory-policy", v("redis_maxmemory_policy")]
    size = str(v("redis_maxmemory")).lower()
    number = size.rstrip("kmgb")
    expected = int(number) * UNITS[size[len(number) :]]
    assert admin(host, v, "CONFIG", "GET", "maxmemory").stdout.split() == [
        "maxmemory",
        str(expected),
    ]


def test_persistence_follows_the_variable(host, v):
    mode = v("redis_persistence")
    appendonly = admin(host, v, "CONFIG", "GET", "appendonly").stdout.split()[1]
    save = admin(host, v, "CONFIG", "GET", "save").stdout.split("\n", 1)[1].strip()
    assert appendonly == ("yes" if mode == "aof" else "no")
    if mode == "aof":
        assert admin(host, v, "CONFIG", "GET", "appendfsync").stdout.split()[1] == "everysec"
    assert (save != "") == (mode == "rdb")


def test_config_file_is_private_and_holds_no_clear_password(host, v):
    config = host.file("/etc/redis/redis.conf")
    assert config.user == "root"
    assert config.group == "redis"
    assert config.mode == 0o640
    recorded = host.check_output("dpkg-statoverride --list /etc/redis/redis.conf")
    assert recorded.split() == ["root", "redis", "640", "/etc/redis/redis.conf"]
    assert "ansible" in config.content_string.lower()
    assert v("redis_default_password") not in config.content_string
    assert v("redis_app_password") not in config.content_string


@pytest.mark.destructive
def test_server_cannot_rewrite_its_own_configuration(host, v):
    """Even the admin's CONFIG REWRITE fails: /etc/redis is read-only to the server, so the
    ACL users in redis.conf change only through the role."""
    before = host.file("/etc/redis/redis.conf").sha256sum
    reply = admin(host, v, "CONFIG", "REWRITE")
    assert "ERR" in reply.stdout + reply.stderr, reply.stdout
    config = host.file("/etc/redis/redis.conf")
    assert config.sha256sum == before
    assert config.user == "root"
    assert host.service("redis-server").is_running


def test_open_file_limit_reaches_the_process(host, v):
    wanted = str(v("redis_limit_nofile"))
    dropin = host.file("/etc/systemd/system/redis-server.service.d/50-stackkit.conf")
    assert f"LimitNOFILE={wanted}" in dropin.content_string
    limits = host.file(f"/proc/{main_pid(host, 'redis-server')}/limits").content_string
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3:5] == [wanted, wanted]


def test_overcommit_is_written_and_applied_where_the_kernel_allows(host, v):
    settings = host.file("/etc/sysctl.d/60-redis.conf").content_string
    for key, value in v("redis_sysctl").items():
        assert f"{key} = {value}" in settings
        if not in_container(host):
            assert host.check_output(f"sysctl -n {key}") == str(value)


FIREWALL_RULES = (
    "query('ansible.builtin.vars', *query('ansible.builtin.varnames', '^common_firewall_allowed'))"
    " | flatten(levels=1)"
)


def test_allowed_hosts_reach_redis_and_others_do_not(host, v, inventory_hosts):
    # Every rule the common role opens (common_firewall_allowed and _*), for Redis's port.
    rules = render(host, FIREWALL_RULES)
    target, port = address_of(host), v("redis_port")
    sources = [s for rule in rules if rule.get("port") == port for s in rule.get("sources", [])]
    if not sources:
        pytest.skip("no firewall rule of this inventory opens Redis's port")
    peers = inventory_hosts("all")
    allowed = [p for p in peers if address_of(p) in sources]
    outsiders = [p for p in peers if address_of(p) not in [*sources, target]]
    assert allowed, "no inventory host is among the allowed sources"
    ca = v("redis_tls_ca_certificate") if v("redis_tls_enabled") else ""
    reply = ping_from(allowed[0], target, port, v("redis_app_user"), v("redis_app_password"), ca)
    assert reply == "+OK\r\n+PONG\r\n"
    for peer in outsiders[:2]:
        assert not tcp_reachable_from(peer, target, port)
    assert not tcp_reachable_from_controller(target, port)
