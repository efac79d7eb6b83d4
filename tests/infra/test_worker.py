"""The worker hosts: one Celery unit per declared worker, consuming its queues as the app
account, durable queues on the broker, and beat on exactly one host."""

from __future__ import annotations

import shlex

import pytest
from conftest import assert_sandboxed, main_pid, process_limits, var_of, wait_for

testinfra_hosts = ["ansible://worker"]
ROLE = "celery"


@pytest.fixture
def workers(v):
    return v("celery_workers")


def unit(worker: dict) -> str:
    return f"catalogue-worker-{worker['name']}"


def test_every_declared_worker_runs_as_the_app_account(host, v, workers):
    for worker in workers:
        service = host.service(unit(worker))
        assert service.is_running, unit(worker)
        assert service.is_enabled, unit(worker)
        assert host.process.get(pid=main_pid(host, unit(worker))).user == v("celery_user")
    assert v("celery_user") != "root"


def test_workers_consume_their_queues(host, workers):
    for worker in workers:
        args = host.file(f"/proc/{main_pid(host, unit(worker))}/cmdline").content.split(b"\0")
        queues = args[args.index(b"--queues") + 1].decode().split(",")
        assert queues == worker["queues"]


def test_open_files_limit_reaches_the_workers(host, v, workers):
    for worker in workers:
        limits = process_limits(host, main_pid(host, unit(worker)))
        assert limits["Max open files"] == (str(v("celery_limit_nofile")),) * 2


def test_workers_and_beat_are_sandboxed(host, workers):
    for worker in workers:
        assert_sandboxed(host, unit(worker), "app")
    if host.service("catalogue-beat").is_running:
        assert_sandboxed(host, "catalogue-beat", "app")


# Connects to the data tier's PostgreSQL port; prints the errno (0: connected).
CONNECT = (
    "import socket, sys; s = socket.socket(); s.settimeout(3); "
    "print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))"
)


def test_a_worker_denied_the_data_tier_cannot_reach_it(host, workers, inventory_hosts):
    """What a worker's IPAddressDeny= does, not only what it says: a process of the same user
    under the unit's own setting cannot connect to PostgreSQL, which the host itself reaches.
    (No listener is started: the probe connects to the database that serves.)"""
    denied = [w for w in workers if w.get("ip_address_deny")]
    if not denied:
        pytest.skip("no worker of this host is denied any address")
    db = inventory_hosts("db")[0]
    address = var_of(db, "private_address", "postgresql")
    port = str(var_of(db, "postgresql_port", "postgresql"))
    deny = host.check_output(f"systemctl show {unit(denied[0])} -p IPAddressDeny --value")
    if address not in {entry.split("/")[0] for entry in deny.split()}:
        pytest.skip("this host shares an address with the data tier (one-host topology)")
    user = host.check_output(f"systemctl show {unit(denied[0])} -p User --value")
    probe = f"python3 -c {shlex.quote(CONNECT)} {address} {port}"
    run = f"systemd-run --quiet --wait --pipe -p User={shlex.quote(user)}"
    assert host.check_output(f"{run} {probe}") == "0"
    assert host.check_output(f"{run} -p IPAddressDeny={shlex.quote(deny)} {probe}") != "0"


def test_broker_queues_are_durable_and_consumed(inventory_hosts, workers):
    broker = inventory_hosts("broker")[0]
    vhost = var_of(broker, "rabbitmq_vhost", "rabbitmq")
    wanted = {queue for worker in workers for queue in worker["queues"]}

    def queues() -> dict[str, tuple[str, int]]:
        out = broker.check_output(
            f"rabbitmqctl -q list_queues -p {vhost} name durable consumers --no-table-headers"
        )
        rows = (line.split() for line in out.splitlines() if line.strip())
        return {name: (durable, int(consumers)) for name, durable, consumers in rows}

    assert wait_for(lambda: wanted <= queues().keys(), timeout=30)
    found = queues()
    for queue in wanted:
        durable, consumers = found[queue]
        assert durable == "true", queue
        assert consumers >= 1, queue


def test_beat_runs_on_exactly_one_worker_host(inventory_hosts):
    running = [h for h in inventory_hosts("worker") if h.service("catalogue-beat").is_running]
    assert len(running) == 1
    beat = running[0]
    assert beat.process.get(pid=main_pid(beat, "catalogue-beat")).user != "root"
