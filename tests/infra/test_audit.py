"""Every host: Lynis (Debian's package, installed by the common role) rates the provisioned host
at least at the bound `make audit` asserts (playbooks/audit.yml). Read-only: Lynis writes only
its log and its report (/var/log/lynis.log, /var/log/lynis-report.dat), as `make audit` does."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

testinfra_hosts = ["ansible://all"]
ROLE = "common"
AUDIT = yaml.safe_load((ROOT / "playbooks" / "audit.yml").read_text())[0]["vars"]


def test_lynis_hardening_index_meets_the_bound(host, v):
    if not v("common_lynis_enabled"):
        pytest.skip("common_lynis_enabled is false: Lynis is not installed by the kit here")
    assert host.package("lynis").is_installed
    host.check_output("lynis audit system --quick --no-colors --quiet")
    report = host.file("/var/log/lynis-report.dat").content_string
    match = re.search(r"^hardening_index=(\d+)$", report, re.MULTILINE)
    assert match, "Lynis wrote no hardening index"
    suggestions = re.findall(r"^suggestion\[\]=([^|]+)", report, re.MULTILINE)
    assert int(match.group(1)) >= AUDIT["audit_lynis_min_index"], (
        f"hardening index {match.group(1)}; open suggestions: {sorted(set(suggestions))}"
    )
