"""The rabbitmq role's cluster, on the broker hosts: every broker is a running member of one
cluster, the app's queues are quorum queues replicated on every broker, a message published
through one broker is consumed through another, and with any one broker stopped the others
take every message and lose none; the stopped broker rejoins when it starts again.

Each test runs once per broker (the broker under test is the one published through, or the
one stopped), so the seed and the joined nodes are all covered.
"""

from __future__ import annotations

import base64
import json
import shlex

import pytest
from conftest import address_of, wait_for
from test_rabbitmq import ctl

testinfra_hosts = ["ansible://broker"]
ROLE = "rabbitmq"

# Runs on an app host with python3-pika: publish COUNT numbered persistent messages with
# publisher confirms and `mandatory` (an unroutable or refused message raises), or drain the
# queue; prints one JSON object.
BATCH_CLIENT = """
import json, os, sys
import pika
address, port, user, vhost, action, queue, count = sys.argv[1:8]
connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=address, port=int(port), virtual_host=vhost,
    credentials=pika.PlainCredentials(user, os.environ["AMQP_PASSWORD"]),
    connection_attempts=3, retry_delay=2, socket_timeout=10))
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare(queue=queue, durable=True)
result = {}
if action == "publish":
    for number in range(int(count)):
        channel.basic_publish("", queue, str(number).encode(),
                              pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                              mandatory=True)
    result["published"] = int(count)
else:
    bodies = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        bodies.append(body.decode())
        channel.basic_ack(method.delivery_tag)
    result["consumed"] = bodies
connection.close()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def brokers(inventory_hosts):
    peers = inventory_hosts("broker")
    if len(peers) < 2:
        pytest.skip("one broker in this inventory: no cluster to check")
    return peers


def node_name(broker) -> str:
    return "rabbit@" + broker.check_output("hostname -s")


def batch(peer, broker, v, action: str, queue: str, count: int = 0) -> dict:
    script = base64.b64encode(BATCH_CLIENT.encode()).decode()
    args = [address_of(broker), v("rabbitmq_amqp_port"), v("rabbitmq_app_user")]
    args += [v("rabbitmq_vhost"), action, queue, count]
    command = (
        f"echo {script} | base64 -d > /tmp/stackkit-amqp-batch.py && "
        f"AMQP_PASSWORD={shlex.quote(v('rabbitmq_app_password'))} "
        "python3 /tmp/stackkit-amqp-batch.py " + " ".join(shlex.quote(str(a)) for a in args)
    )
    return json.loads(peer.check_output(command))


def running_nodes(broker) -> set[str]:
    result = broker.run("rabbitmqctl --quiet cluster_status --formatter json")
    return set(json.loads(result.stdout)["running_nodes"]) if result.rc == 0 else set()


def others(host, brokers) -> list:
    """The other brokers, in inventory order."""
    name = node_name(host)
    return [broker for broker in brokers if node_name(broker) != name]


def queue_members(broker, v, queue: str) -> dict:
    vhost = shlex.quote(v("rabbitmq_vhost"))
    queues = ctl(broker, "list_queues", "-p", vhost, "name", "type", "members")
    return next(q for q in queues if q["name"] == queue)


def test_the_broker_is_a_running_member_of_one_cluster_of_every_broker(host, brokers):
    wanted = {node_name(broker) for broker in brokers}
    assert len(wanted) == len(brokers) > 1
    assert running_nodes(host) == wanted
    status = json.loads(host.check_output("rabbitmqctl --quiet cluster_status --formatter json"))
    assert set(status["disk_nodes"]) == wanted


def test_every_broker_shares_the_vaults_erlang_cookie(host, brokers):
    cookies = {b.file("/var/lib/rabbitmq/.erlang.cookie").sha256sum for b in brokers}
    assert len(cookies) == 1
    assert host.file("/var/lib/rabbitmq/.erlang.cookie").mode == 0o400


@pytest.mark.destructive
def test_a_message_published_through_this_broker_is_consumed_through_another(
    host, brokers, v, app_host
):
    queue = f"stackkit.probe.cluster.{node_name(host)}"
    assert batch(app_host, host, v, "publish", queue, 5) == {"published": 5}
    members = queue_members(host, v, queue)
    assert members["type"] == "quorum"
    assert set(members["members"]) == {node_name(broker) for broker in brokers}
    consumed = batch(app_host, others(host, brokers)[-1], v, "drain", queue)
    assert consumed == {"consumed": [str(n) for n in range(5)]}


@pytest.mark.destructive
def test_with_this_broker_stopped_the_others_lose_no_message_and_it_rejoins(
    host, brokers, v, app_host
):
    count = 200
    queue = f"stackkit.probe.outage.{node_name(host)}"
    first, last = others(host, brokers)[0], others(host, brokers)[-1]
    wanted = {node_name(broker) for broker in brokers}
    # The queue exists, replicated everywhere, before the broker goes.
    assert batch(app_host, first, v, "drain", queue) == {"consumed": []}
    host.check_output("systemctl stop rabbitmq-server")
    try:
        assert wait_for(lambda: running_nodes(first) == wanted - {node_name(host)}, timeout=60)
        assert batch(app_host, first, v, "publish", queue, count) == {"published": count}
        consumed = batch(app_host, last, v, "drain", queue)["consumed"]
    finally:
        host.check_output("systemctl start rabbitmq-server")
    assert sorted(consumed, key=int) == [str(n) for n in range(count)]
    host.check_output("rabbitmqctl --quiet await_startup --timeout 120")
    assert wait_for(lambda: running_nodes(first) == wanted, timeout=120), running_nodes(first)
    assert running_nodes(host) == wanted


ROLLING = "/var/tmp/stackkit-publisher.json"
# systemd's "unit started" journal message.
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"


@pytest.fixture
def rolling(app_host) -> dict:
    """What molecule/rabbitmq-cluster/side_effect.yml's publisher wrote: it published through
    the cluster while one broker was stopped and the role's converge started that broker again
    and restarted every broker, one at a time."""
    if not app_host.file(ROLLING).exists:
        pytest.skip("no publisher ran through a converge here (molecule/rabbitmq-cluster)")
    return json.loads(app_host.file(ROLLING).content_string)


def test_the_converge_restarted_this_broker_while_the_publisher_ran(host, rolling):
    journal = host.check_output(
        f"journalctl -q -o cat UNIT=rabbitmq-server.service MESSAGE_ID={UNIT_STARTED} "
        f"--since @{int(rolling['started'])} --until @{int(rolling['stopped']) + 1}"
    )
    assert journal.splitlines(), "rabbitmq-server did not start while the publisher ran"


@pytest.mark.destructive
def test_every_message_confirmed_through_the_outage_and_the_restarts_is_delivered(
    host, brokers, v, app_host, rolling
):
    if node_name(host) != node_name(brokers[0]):
        pytest.skip("the queue is drained once, through the first broker")
    assert rolling["confirmed"], rolling
    consumed = batch(app_host, host, v, "drain", "stackkit.probe.rolling")["consumed"]
    lost = set(rolling["confirmed"]) - {int(n) for n in consumed}
    assert lost == set(), f"{len(lost)} of {len(rolling['confirmed'])} confirmed messages lost"
