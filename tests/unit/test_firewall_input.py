"""A firewall rule says where it admits traffic from: without `sources`, with an empty list or
with anything but addresses, networks or [any], the common role refuses it before any change,
naming the variable that holds it."""

from __future__ import annotations

import pytest
from preflight import output, run_preflight

COMMON = {
    "common_deploy_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUnitTestKey unit@test"],
    "common_firewall_ssh_sources": ["10.0.0.0/16"],
}


def test_firewall_rules_with_addresses_or_any_pass(tmp_path):
    rules = {
        "common_firewall_allowed_web": [{"port": 80, "sources": ["any"]}],
        "common_firewall_allowed_db": [{"port": 5432, "sources": ["10.0.1.0/24", "fd00::5"]}],
    }
    result = run_preflight(tmp_path, "common", {**COMMON, **rules})
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "rule",
    [
        {"port": 6379},
        {"port": 6379, "sources": []},
        {"port": 6379, "sources": ["any", "10.0.0.5"]},
        {"port": 6379, "sources": "10.0.0.5"},
        {"port": 6379, "sources": ["anywhere"]},
    ],
    ids=["no-sources", "empty", "any-and-an-address", "a-string", "not-an-address"],
)
def test_a_firewall_rule_must_say_where_from(tmp_path, rule):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_firewall_allowed_redis": [rule]})
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text
    assert "common_firewall_allowed_redis" in text
    assert "[any]" in text
