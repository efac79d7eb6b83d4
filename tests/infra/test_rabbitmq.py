"""The rabbitmq role, on the broker hosts: private AMQP listener, no guest, an app user
confined to its vhost, durable messages across restarts, limits of the running broker.

Logins are tried from an app host (read-only); declaring, publishing and consuming queues and
restarting the broker are marked destructive."""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from conftest import ROOT, address_of, assert_sandboxed, listeners, main_pid, relay_from, wait_for
from test_tls import probe_ports

testinfra_hosts = ["ansible://broker"]
ROLE = "rabbitmq"
BIN = Path(sys.executable).parent
# RabbitMQ reads kB/MB/GB as powers of 1000 and k/M/G/kiB/MiB/GiB as powers of 1024.
UNITS = {"": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "k": 2**10, "kiB": 2**10}
UNITS |= {"M": 2**20, "MiB": 2**20, "G": 2**30, "GiB": 2**30}
# A page as text, fetched on the host itself.
_GET = "import sys, urllib.request as r; print(r.urlopen(sys.argv[1], timeout=10).read().decode())"


def amqp(peer, broker, v, action: str, queue: str, user=None, password=None, vhost=None):
    """One action as a client on an app host: pika runs on the controller, its connection
    leaves from the peer to the broker's private address (the app hosts need no AMQP tool)."""
    secret = password if password is not None else v("rabbitmq_app_password")
    with relay_from(peer, address_of(broker), v("rabbitmq_amqp_port")) as port:
        try:
            connection = pika.BlockingConnection(
                pika.ConnectionParameters(
                    host="127.0.0.1",
                    port=port,
                    ssl_options=tls_options(broker, v),
                    virtual_host=vhost or v("rabbitmq_vhost"),
                    credentials=pika.PlainCredentials(user or v("rabbitmq_app_user"), secret),
                    connection_attempts=1,
                    socket_timeout=10,
                    blocked_connection_timeout=10,
                )
            )
        except pika.exceptions.AMQPError as error:
            return {"connected": False, "error": f"{type(error).__name__}: {error}"}
        result: dict = {"connected": True}
        try:
            if action == "connect":
                return result
            channel = connection.channel()
            channel.confirm_delivery()
            channel.queue_declare(queue=queue, durable=True)
            if action == "declare":
                return result
            if action in ("publish", "roundtrip"):
                properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
                body = f"stackkit {queue}".encode()
                channel.basic_publish("", queue, body, properties, mandatory=True)
            if action in ("consume", "roundtrip"):
                _, _, body = channel.basic_get(queue, auto_ack=True)
                result["body"] = body.decode() if body else None
            return result
        finally:
            connection.close()


def tls_options(broker, v):
    """With AMQPS only, pika checks the broker's certificate against the CA it was issued by
    and the broker's own address, through the relay."""
    if not v("rabbitmq_tls_enabled"):
        return None
    ca = broker.file(v("rabbitmq_tls_ca_certificate")).content_string
    context = ssl.create_default_context(cadata=ca)
    return pika.SSLOptions(context, server_hostname=address_of(broker))


def ctl(host, *args: str):
    return json.loads(
        host.check_output("rabbitmqctl --quiet " + " ".join(args) + " --formatter json")
    )


def test_broker_runs_as_rabbitmq(host):
    service = host.service("rabbitmq-server")
    assert service.is_running
    assert service.is_enabled
    users = host.check_output("ps -o user= -C beam.smp").split()
    assert users
    assert set(users) == {"rabbitmq"}


def test_broker_is_sandboxed(host):
    assert_sandboxed(host, "rabbitmq-server", "data")


def test_amqp_listens_on_the_private_address_only(host, v):
    port = v("rabbitmq_amqp_port")
    assert host.socket(f"tcp://{address_of(host)}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening


def test_prometheus_endpoint_is_off_or_on_the_private_address_only(host, v):
    """With rabbitmq_prometheus_enabled, the plugin serves metrics on the private address and
    nowhere else; without it, the port is closed everywhere."""
    port = v("rabbitmq_prometheus_port")
    enabled = host.check_output("rabbitmq-plugins --quiet list --enabled --minimal").split()
    assert ("rabbitmq_prometheus" in enabled) == v("rabbitmq_prometheus_enabled")
    private = host.socket(f"tcp://{address_of(host)}:{port}")
    if v("rabbitmq_prometheus_enabled"):
        assert wait_for(lambda: private.is_listening)
        assert "rabbitmq_identity_info" in prometheus_metrics(host, v)
    else:
        assert not private.is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening


def prometheus_metrics(host, v) -> str:
    """The plugin's /metrics, read on the broker from its private address."""
    url = f"http://{address_of(host)}:{v('rabbitmq_prometheus_port')}/metrics"
    return host.check_output("python3 -c %s %s", _GET, url)


@pytest.mark.destructive
def test_the_prometheus_endpoint_has_series_per_queue(host, v, app_host, inventory_hosts):
    """A queue declared as the app does gets its own series, labelled with its vhost: what
    RabbitMQQueueGrowing reads. (A fresh broker has no queue: one is declared here.) In a
    cluster the node that holds the queue reports it: any broker's endpoint may."""
    if not v("rabbitmq_prometheus_enabled"):
        pytest.skip("rabbitmq_prometheus_enabled is false")
    queue, vhost = "stackkit.probe.metrics", v("rabbitmq_vhost")
    assert amqp(app_host, host, v, "declare", queue)["connected"]
    labels = (f'vhost="{vhost}"', f'queue="{queue}"')
    seen: list[str] = []

    def listed() -> bool:
        seen[:] = [
            line
            for broker in inventory_hosts("broker")
            for line in prometheus_metrics(broker, v).splitlines()
            if queue in line
        ]
        return any(
            line.startswith("rabbitmq_queue_messages_ready{") and all(x in line for x in labels)
            for line in seen
        )

    # The plugin collects queue statistics every few seconds.
    assert wait_for(listed, 60), seen[:10]


def test_management_plugin_is_off_or_on_loopback(host, v):
    port = v("rabbitmq_management_port")
    enabled = host.check_output("rabbitmq-plugins --quiet list --enabled --minimal").split()
    assert ("rabbitmq_management" in enabled) == v("rabbitmq_management_enabled")
    if v("rabbitmq_management_enabled"):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://{address_of(host)}:{port}").is_listening


def test_guest_user_is_gone_and_cannot_log_in(host, v, app_host):
    assert "guest" not in [u["user"] for u in ctl(host, "list_users")]
    result = amqp(app_host, host, v, "connect", "stackkit.probe", user="guest", password="guest")
    assert not result["connected"]
    assert "Authentication" in result["error"] or "ACCESS_REFUSED" in result["error"]


@pytest.mark.destructive
def test_app_user_publishes_and_consumes_on_its_vhost(host, v, app_host):
    result = amqp(app_host, host, v, "roundtrip", "stackkit.probe.roundtrip")
    assert result == {"connected": True, "body": "stackkit stackkit.probe.roundtrip"}


def test_app_user_cannot_open_the_default_vhost(host, v, app_host):
    result = amqp(app_host, host, v, "connect", "stackkit.probe", vhost="/")
    assert not result["connected"]
    assert "not_allowed" in result["error"].lower() or "access" in result["error"].lower()


def test_app_user_has_permissions_on_its_vhost_only(host, v):
    listed = ctl(host, "list_user_permissions", shlex.quote(v("rabbitmq_app_user")))
    assert [p["vhost"] for p in listed] == [v("rabbitmq_vhost")]
    tags = [u["tags"] for u in ctl(host, "list_users") if u["user"] == v("rabbitmq_app_user")]
    assert tags == [[]]


def test_the_vhost_defaults_to_the_configured_queue_type(host, v):
    wanted = v("rabbitmq_vhost_default_queue_type")
    vhosts = {d["name"]: d for d in ctl(host, "list_vhosts", "name", "default_queue_type")}
    assert vhosts[v("rabbitmq_vhost")]["default_queue_type"] == wanted


@pytest.mark.destructive
def test_a_queue_declared_without_a_type_gets_the_vhost_default(host, v, app_host):
    wanted = v("rabbitmq_vhost_default_queue_type")
    assert amqp(app_host, host, v, "declare", "stackkit.probe.type")["connected"]
    queues = ctl(host, "list_queues", "-p", shlex.quote(v("rabbitmq_vhost")), "name", "type")
    assert {q["name"]: q["type"] for q in queues}["stackkit.probe.type"] == wanted


@pytest.mark.destructive
def test_persistent_message_survives_a_restart(host, v, app_host):
    queue = "stackkit.probe.durable"
    assert amqp(app_host, host, v, "publish", queue)["connected"]
    host.check_output("systemctl restart rabbitmq-server")
    host.check_output("rabbitmqctl await_startup --timeout 120")
    port = v("rabbitmq_amqp_port")
    assert wait_for(lambda: host.socket(f"tcp://{address_of(host)}:{port}").is_listening, 60)
    assert amqp(app_host, host, v, "consume", queue)["body"] == f"stackkit {queue}"


@pytest.mark.destructive
def test_the_converge_checks_and_sets_the_password_out_of_every_process_list(
    host, v, app_host, tmp_path
):
    """With the app user's password changed behind Ansible's back, the role finds it wrong and
    sets it again, both through rabbitmqctl's stdin: a sampler of every process's arguments on
    the broker sees both commands and never the password. In a cluster the seed broker runs
    them (the user is cluster-wide), so the check runs there."""
    seed = v("__rabbitmq_cluster_seed")
    if host.backend.get_hostname() != seed:
        pytest.skip(f"the cluster's seed broker ({seed}) manages the app user")
    user, password = v("rabbitmq_app_user"), v("rabbitmq_app_password")
    # printf is the shell's builtin: the stale password is in no argument list either.
    host.check_output(
        f"printf %s stale-password-0123456789 | rabbitmqctl change_password {shlex.quote(user)}"
    )
    assert not amqp(app_host, host, v, "connect", "")["connected"]
    log = "/run/stackkit-argv.log"
    sampler = "stackkit-argv-sampler"
    # [a]... matches the commands, not the sampler's own grep.
    host.check_output(
        f"rm -f {log}; systemd-run --quiet --collect --unit={sampler} sh -c "
        + shlex.quote(
            "while :; do ps -eww -o args= | grep -e '[a]uthenticate_user' -e '[c]hange_password'; "
            f"sleep 0.05; done >> {log}"
        )
    )
    playbook = tmp_path / "rabbitmq.yml"
    playbook.write_text(
        "- name: Converge the brokers\n  hosts: broker\n  become: true\n  roles: [rabbitmq]\n"
    )
    try:
        run = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", host.backend.ansible_inventory, str(playbook)],
            cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
        )  # fmt: skip
    finally:
        host.run(f"systemctl stop {sampler}")
    seen = host.check_output(f"cat {log}")
    host.check_output(f"rm -f {log}")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "authenticate_user" in seen and "change_password" in seen, "the sampler saw nothing"
    assert password not in seen
    assert amqp(app_host, host, v, "connect", "")["connected"]


def test_erlang_cookie_comes_from_the_inventory_and_is_private(host, v):
    cookie = host.file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq"
    assert cookie.mode == 0o400
    assert cookie.content_string.strip() == v("rabbitmq_erlang_cookie")


def test_disk_free_limit_is_live(host, v):
    size = str(v("rabbitmq_disk_free_limit"))
    number = size.rstrip("kKMGiB")
    expected = int(number) * UNITS[size[len(number) :]]
    status = ctl(host, "status")
    assert int(status["disk_free_limit"]) == expected


def test_open_file_limit_reaches_the_broker(host, v):
    wanted = str(v("rabbitmq_limit_nofile"))
    dropin = host.file("/etc/systemd/system/rabbitmq-server.service.d/50-stackkit.conf")
    assert f"LimitNOFILE={wanted}" in dropin.content_string
    limits = host.file(f"/proc/{main_pid(host, 'rabbitmq-server')}/limits").content_string
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3:5] == [wanted, wanted]


def test_epmd_and_erlang_distribution_listen_on_the_private_address_only(host, v):
    """epmd (4369) on loopback and the private address, the distribution on the private
    address and the one port the firewall names; neither on every interface."""
    private = address_of(host)
    dist_port = v("rabbitmq_dist_port")
    found = {(s.address, s.port) for s in listeners(host) if s.port in (4369, dist_port)}
    assert found == {("127.0.0.1", 4369), (private, 4369), (private, dist_port)}, found
    # The broker registered with that epmd under its distribution port.
    assert f"at port {dist_port}" in host.check_output("epmd -names")


def dist_tls_only(host, v):
    if not v("rabbitmq_dist_tls_enabled"):
        pytest.skip("rabbitmq_dist_tls_enabled is false here: the distribution is plaintext")


def test_the_erlang_distribution_runs_over_tls_for_peers_and_cli_tools(host, v):
    """The broker was started with Erlang's TLS distribution, and every connection it holds
    (the other brokers, and the rabbitmq-diagnostics and rabbitmqctl asking here) is TLS."""
    dist_tls_only(host, v)
    arguments = host.check_output("rabbitmq-diagnostics --quiet command_line_arguments")
    assert '{proto_dist,["inet_tls"]}' in arguments, arguments
    assert '{ssl_dist_optfile,["/etc/rabbitmq/inter_node_tls.config"]}' in arguments, arguments
    nodes = host.check_output("rabbitmqctl --quiet eval 'net_kernel:nodes_info().'")
    # {net_address,{{IP,PORT},"HOST",PROTOCOL,FAMILY}} per connected node, this CLI tool's too.
    protocols = re.findall(r'"[^"]*",\s*(\w+),\s*inet6?\}', nodes)
    assert protocols, nodes
    assert set(protocols) == {"tls"}, nodes


def test_the_distribution_port_refuses_a_plaintext_node_and_takes_the_kits_tls(host, v):
    """From the broker itself (the firewall keeps the port to the brokers), with test_tls's
    port probe: a plaintext node's opening message gets a TLS alert record and the connection
    closed, while a handshake with the internal CA, this host's certificate and the node's host
    name (what a peer checks) succeeds, so the refusal is about the protocol, not
    reachability."""
    dist_tls_only(host, v)
    node_host = host.check_output("hostname -s")
    (result,) = probe_ports(
        host, [f"{address_of(host)},{v('rabbitmq_dist_port')},erlang,{node_host}"]
    )
    assert result["kit"].get("ok") in ("TLSv1.2", "TLSv1.3"), result
    answer = bytes.fromhex(result["plain"]["answer"])
    # A TLS alert record (content type 21), then the server closes; a plaintext distribution
    # would answer with its own status message ('s' after a two-byte length).
    assert answer[:1] == b"\x15", result
    assert result["plain"]["closed"], result
