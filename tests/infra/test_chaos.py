"""The short fault round of `make chaos`, on the hosts under test: products stream through
nginx while RabbitMQ restarts, the default Celery worker is SIGKILLed and PostgreSQL restarts;
every product answered 202 must be stored once, indexed and given its history.

Destructive (it restarts services): molecule's stack scenario runs it on disposable hosts.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.destructive


def test_no_accepted_product_is_lost_through_a_short_fault_round(pytestconfig):
    inventory = pytestconfig.option.ansible_inventory
    command = [
        sys.executable,
        "-m",
        "stackkit.chaos",
        "--short",
        "--disposable",
        "--inventory",
        inventory,
        "--rate",
        "5",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert '"lost": 0' in result.stdout
