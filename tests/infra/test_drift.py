"""The drift suite's short round (stackkit/drift.py, `make drift` runs every kind): changes
made on the hosts behind Ansible's back, to the sshd options, the firewall, a package, the
kernel settings, redis.conf and a unit's open-files limit, are all reported by one
`site.yml --check --diff`, repaired by the next default run, and the run after that changes
nothing. The runs are limited to the roles those kinds belong to (drift.QUICK_TAGS). They take
the fast path of every default run: the check run must find the drifted host changed since its
record, and the last run must find every host as recorded (drift.run says which did not)."""

from __future__ import annotations

import pytest
from conftest import render

from stackkit import drift

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://all"]


def test_drift_is_reported_by_check_repaired_by_the_default_run_then_nothing_changes(
    host, pytestconfig
):
    if render(host, "inventory_hostname != groups['all'][0]"):
        pytest.skip("the drift round covers every host; it runs once, from the first")
    figures = drift.run(pytestconfig.option.ansible_inventory, list(drift.QUICK), drift.QUICK_TAGS)
    assert figures["noop"]["changed"] == 0
    assert figures["check_converging"] and figures["noop_converging"] == []
    assert len(figures["kinds"]) == len(drift.QUICK) >= 5
