"""Who may reach a host and become root: SSH sources must be named (an admin network, or [any]
on purpose), a sudo password is required and strong when passwordless sudo is off, and the
bootstrap account to lock is neither the deploy user nor root. Refused before any change."""

from __future__ import annotations

import pytest
from preflight import output, run_preflight
from test_firewall_input import COMMON

STRONG = "a-strong-sudo-password-of-32-chr"


@pytest.mark.parametrize("sources", [["10.0.0.0/16"], ["any"], ["10.1.2.3", "fd00::/64"]])
def test_named_ssh_sources_pass(tmp_path, sources):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_firewall_ssh_sources": sources})
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("sources", [[], ["any", "10.0.0.5"], ["admin-net"]])
def test_unnamed_ssh_sources_are_refused(tmp_path, sources):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_firewall_ssh_sources": sources})
    assert result.returncode != 0, output(result)
    assert "common_firewall_ssh_sources" in output(result)


def test_password_sudo_passes_with_a_strong_password(tmp_path):
    variables = {
        **COMMON,
        "common_deploy_passwordless_sudo": False,
        "common_deploy_sudo_password": STRONG,
    }
    result = run_preflight(tmp_path, "common", variables)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("password", ["", "replace-me", "Sh0rt-but-15-ch"])
def test_password_sudo_refuses_a_weak_password_without_showing_it(tmp_path, password):
    variables = {
        **COMMON,
        "common_deploy_passwordless_sudo": False,
        "common_deploy_sudo_password": password,
    }
    result = run_preflight(tmp_path, "common", variables)
    text = output(result)
    assert result.returncode != 0, text
    assert "common_deploy_sudo_password" in text
    assert not password or password not in text


@pytest.mark.parametrize("user", ["deploy", "root"])
def test_the_bootstrap_account_cannot_be_the_deploy_user_or_root(tmp_path, user):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_bootstrap_user": user})
    assert result.returncode != 0, output(result)
    assert "common_bootstrap_user" in output(result)


@pytest.mark.parametrize("tunnels", [[], ["10.0.0.5:9090", "10.0.0.5:9093"], ["[fd00::5]:9090"]])
def test_named_tunnels_pass(tmp_path, tunnels):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_sshd_permit_open": tunnels})
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "tunnels", [["10.0.0.5"], ["10.0.0.5:0"], ["10.0.0.5:70000"], ["any"], ["10.0.0.5:9090 *:*"]]
)
def test_a_tunnel_without_a_host_and_port_is_refused(tmp_path, tunnels):
    result = run_preflight(tmp_path, "common", {**COMMON, "common_sshd_permit_open": tunnels})
    assert result.returncode != 0, output(result)
    assert "common_sshd_permit_open" in output(result)
