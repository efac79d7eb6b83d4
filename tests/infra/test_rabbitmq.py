"""The rabbitmq role, on the broker hosts: private AMQP listener, no guest, an app user
confined to its vhost, durable messages across restarts, limits of the running broker."""

from __future__ import annotations

import base64
import json
import shlex

from conftest import address_of, assert_sandboxed, main_pid, wait_for

testinfra_hosts = ["ansible://broker"]
ROLE = "rabbitmq"
# RabbitMQ reads kB/MB/GB as powers of 1000 and k/M/G/kiB/MiB/GiB as powers of 1024.
UNITS = {"": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "k": 2**10, "kiB": 2**10}
UNITS |= {"M": 2**20, "MiB": 2**20, "G": 2**30, "GiB": 2**30}

# Runs on an app host with python3-pika; prints one JSON object.
CLIENT = """
import json, os, sys
import pika
address, port, user, vhost, action, queue = sys.argv[1:7]
try:
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host=address, port=int(port), virtual_host=vhost,
        credentials=pika.PlainCredentials(user, os.environ["AMQP_PASSWORD"]),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5))
except Exception as error:
    print(json.dumps({"connected": False, "error": f"{type(error).__name__}: {error}"}))
    sys.exit(0)
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare(queue=queue, durable=True)
result = {"connected": True}
if action in ("publish", "roundtrip"):
    channel.basic_publish("", queue, f"stackkit {queue}".encode(),
                          pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                          mandatory=True)
if action in ("consume", "roundtrip"):
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    result["body"] = body.decode() if body else None
connection.close()
print(json.dumps(result))
"""


def amqp(peer, broker, v, action: str, queue: str, user=None, password=None, vhost=None):
    """Connect from an app host to the broker's private address and run one action."""
    script = base64.b64encode(CLIENT.encode()).decode()
    args = [
        address_of(broker),
        str(v("rabbitmq_amqp_port")),
        user or v("rabbitmq_app_user"),
        vhost or v("rabbitmq_vhost"),
        action,
        queue,
    ]
    secret = password if password is not None else v("rabbitmq_app_password")
    command = (
        f"echo {script} | base64 -d > /tmp/stackkit-amqp.py && "
        f"AMQP_PASSWORD={shlex.quote(secret)} python3 /tmp/stackkit-amqp.py "
        + " ".join(shlex.quote(a) for a in args)
    )
    return json.loads(peer.check_output(command))


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


def test_queues_of_the_vhost_default_to_the_configured_type(host, v, app_host):
    wanted = v("rabbitmq_vhost_default_queue_type")
    vhosts = {d["name"]: d for d in ctl(host, "list_vhosts", "name", "default_queue_type")}
    assert vhosts[v("rabbitmq_vhost")]["default_queue_type"] == wanted
    amqp(app_host, host, v, "connect", "stackkit.probe.type")
    queues = ctl(host, "list_queues", "-p", shlex.quote(v("rabbitmq_vhost")), "name", "type")
    assert {q["name"]: q["type"] for q in queues}["stackkit.probe.type"] == wanted


def test_persistent_message_survives_a_restart(host, v, app_host):
    queue = "stackkit.probe.durable"
    assert amqp(app_host, host, v, "publish", queue)["connected"]
    host.check_output("systemctl restart rabbitmq-server")
    host.check_output("rabbitmqctl await_startup --timeout 120")
    port = v("rabbitmq_amqp_port")
    assert wait_for(lambda: host.socket(f"tcp://{address_of(host)}:{port}").is_listening, 60)
    assert amqp(app_host, host, v, "consume", queue)["body"] == f"stackkit {queue}"


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
