"""The worker hosts: one Celery unit per declared worker, consuming its queues as the app
account, durable queues on the broker, and beat on exactly one host."""

from __future__ import annotations

import shlex

import pytest
from conftest import (
    CONNECT_PROBE,
    address_of,
    assert_sandboxed,
    main_pid,
    process_limits,
    var_of,
    wait_for,
)

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


DATA_TIERS = ("db", "cache", "docs", "search")


def test_a_worker_denied_the_data_tier_cannot_reach_it(host, workers, inventory_hosts):
    """What a worker's IPAddressDeny= does, not only what it says: a process of the same user
    under the unit's own setting connects to none of the ports the data hosts listen on (read
    from `ss` there) that the same user reaches without it. (No listener is started: the probe
    connects to the services that serve.)"""
    denied = [w for w in workers if w.get("ip_address_deny")]
    if not denied:
        pytest.skip("no worker of this host is denied any address (one-host topology)")
    deny = host.check_output(f"systemctl show {unit(denied[0])} -p IPAddressDeny --value")
    # The unit as systemd loaded it denies what the play declared: a drop-in cannot undo it.
    declared = set(denied[0]["ip_address_deny"])
    missing = declared - {entry.split("/")[0] for entry in deny.split()}
    assert not missing, f"{unit(denied[0])} does not deny {sorted(missing)}: {deny!r}"
    targets = []
    for group in DATA_TIERS:
        for data in inventory_hosts(group):
            address = address_of(data)
            if address not in declared:
                continue
            for line in data.check_output("ss -H -ltn").splitlines():
                bound, port = line.split()[3].rsplit(":", 1)
                if bound in (address, "0.0.0.0", "*", "[::]"):
                    targets.append(f"{address}:{port}")
    assert targets, f"no data host has a denied address {sorted(declared)}"
    targets = sorted(set(targets))
    user = host.check_output(f"systemctl show {unit(denied[0])} -p User --value")
    probe = f"python3 -c {shlex.quote(CONNECT_PROBE)} {' '.join(targets)}"
    run = f"systemd-run --quiet --wait --pipe -p User={shlex.quote(user)}"
    allowed = dict(zip(targets, host.check_output(f"{run} {probe}").split(), strict=True))
    # Where a data host is also a monitor host, or runs exporters, some of its ports are open to
    # the monitor hosts only and time out here whatever the unit says: the filter is judged on
    # the ports the account reaches without it, which must include one of every denied host.
    reachable = sorted(target for target, errno in allowed.items() if errno == "0")
    hosts = {target.rsplit(":", 1)[0] for target in targets}
    assert {target.rsplit(":", 1)[0] for target in reachable} == hosts, (
        f"the app account cannot reach the data tier: {allowed}"
    )
    targets = reachable
    probe = f"python3 -c {shlex.quote(CONNECT_PROBE)} {' '.join(targets)}"
    # The unit's own address filter, an allow list included (systemd lets an allowed address
    # through whatever the deny list says).
    allow = host.check_output(f"systemctl show {unit(denied[0])} -p IPAddressAllow --value")
    limits = f"-p IPAddressDeny={shlex.quote(deny)}"
    limits += f" -p IPAddressAllow={shlex.quote(allow)}" if allow else ""
    blocked = host.check_output(f"{run} {limits} {probe}").split()
    reached = [t for t, errno in zip(targets, blocked, strict=True) if errno == "0"]
    assert not reached, f"{unit(denied[0])}'s IPAddressDeny= lets these through: {reached}"


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
