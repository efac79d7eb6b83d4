"""Fabric one-shot deploys on a web host that Ansible deployed: the same release is left alone,
another checkout goes live and is served, and a rollback returns to Ansible's release."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, address_of, render

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://web"]
ROLE = "app"
pytestmark = pytest.mark.destructive  # every test deploys
STYLESHEET = "catalogue/catalogue.css"


@pytest.fixture(scope="module")
def fab(host, pytestconfig):
    """Run `fab -H <inventory name>` from the controller: Fabric finds the rest in the inventory."""
    name = render(host, "inventory_hostname")
    inventory = str(Path(pytestconfig.option.ansible_inventory).resolve())

    def run(*task: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fabric", "-H", name, *task, "--inventory", inventory]
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )

    return run


def live(host, v) -> str:
    return host.file(f"{v('app_root')}/current").linked_to


def stylesheet(host, var) -> bytes:
    url = f"https://{address_of(host)}:{var('nginx_tls_port', 'nginx')}/static/{STYLESHEET}"
    trust = ssl.create_default_context(cafile=var("nginx_tls_ca_certificate_path", "nginx") or None)
    with urllib.request.urlopen(url, timeout=10, context=trust) as response:
        return response.read()


def test_fabric_leaves_the_live_release_alone(host, v, fab):
    shipped = fab("deploy")  # app/ as it is, whichever release an earlier test left live
    assert shipped.returncode == 0, shipped.stderr
    before = live(host, v)
    restarted = host.check_output("systemctl show -p ActiveEnterTimestamp catalogue.target")
    result = fab("deploy")
    assert result.returncode == 0, result.stderr
    assert "already live" in result.stdout
    assert live(host, v) == before
    assert host.check_output("systemctl show -p ActiveEnterTimestamp catalogue.target") == restarted


def test_fabric_deploys_another_checkout_and_rolls_back(host, v, var, fab, tmp_path):
    ansible_release = live(host, v)
    marker = f"/* deployed by fabric {uuid.uuid4().hex} */\n".encode()
    checkout = tmp_path / "app"
    shutil.copytree(
        ROOT / "app", checkout, ignore=shutil.ignore_patterns(".venv", "__pycache__", "staticfiles")
    )
    css = checkout / "catalogue" / "static" / STYLESHEET
    css.write_bytes(css.read_bytes() + marker)

    deployed = fab("deploy", "--source", str(checkout))
    assert deployed.returncode == 0, deployed.stderr
    fabric_release = live(host, v)
    assert fabric_release != ansible_release
    assert host.file(f"{v('app_root')}/previous").linked_to == ansible_release
    assert stylesheet(host, var).endswith(marker)
    assert host.service("catalogue-web").is_running

    rolled_back = fab("rollback")
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert live(host, v) == ansible_release
    assert host.file(f"{v('app_root')}/previous").linked_to == fabric_release
    assert not stylesheet(host, var).endswith(marker)
