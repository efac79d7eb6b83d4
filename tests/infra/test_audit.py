"""Every host: Lynis (Debian's package, installed by the common role) rates the provisioned host
at least at the bound `make audit` asserts (playbooks/audit.yml). Read-only: Lynis writes only
its log and its report (/var/log/lynis.log, /var/log/lynis-report.dat), as `make audit` does."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from conftest import ROOT

testinfra_hosts = ["ansible://all"]
ROLE = "common"
PLAY = yaml.safe_load((ROOT / "playbooks" / "audit.yml").read_text())[0]
AUDIT = PLAY["vars"]
# make audit's own command for the Lynis tests that scored under their maximum.
POINTS_SHORT = next(
    task["ansible.builtin.command"]["argv"]
    for task in PLAY["tasks"]
    if task["name"] == "Read the tests that scored under their maximum"
)


def test_lynis_hardening_index_meets_the_bound(host, v):
    if not v("common_lynis_enabled"):
        pytest.skip("common_lynis_enabled is false: Lynis is not installed by the kit here")
    assert host.package("lynis").is_installed
    host.check_output("lynis audit system --quick --no-colors --quiet")
    report = host.file("/var/log/lynis-report.dat").content_string
    match = re.search(r"^hardening_index=(\d+)$", report, re.MULTILINE)
    assert match, "Lynis wrote no hardening index"
    assert int(match.group(1)) >= AUDIT["audit_lynis_min_index"], (
        f"hardening index {match.group(1)}; points short, per test: "
        f"{host.check_output(shlex.join(POINTS_SHORT)).splitlines()}"
    )


def test_lynis_audits_leave_the_package_lists_alone(host, v):
    """Lynis refreshes the apt lists before its security-update test unless told not to."""
    if not v("common_lynis_enabled"):
        pytest.skip("common_lynis_enabled is false: Lynis is not installed by the kit here")
    profile = host.file("/etc/lynis/custom.prf")
    assert profile.exists
    assert re.search(r"^refresh-repositories=no$", profile.content_string, re.MULTILINE)
