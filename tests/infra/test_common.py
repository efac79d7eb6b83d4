"""The common role, on every host: packages, locale, time, deploy user, sshd, journald,
unattended upgrades, the nftables firewall and kernel settings."""

from __future__ import annotations

import re

import pytest
from conftest import (
    address_of,
    in_container,
    render,
    tcp_reachable_from,
    tcp_reachable_from_controller,
    wait_for,
)

testinfra_hosts = ["ansible://all"]
ROLE = "common"


def test_base_packages_are_installed(host, v):
    for name in v("common_packages") + v("common_extra_packages"):
        assert host.package(name).is_installed, name


def test_default_locale_is_generated_and_set(host, v):
    locale = v("common_locale")
    assert f"LANG={locale}" in host.file("/etc/default/locale").content_string
    available = host.check_output("locale -a").lower().replace("-", "")
    assert locale.lower().replace("-", "") in available.splitlines()


def test_timezone_is_set(host, v):
    zone = v("common_timezone")
    assert host.file("/etc/localtime").linked_to.endswith(f"/zoneinfo/{zone}")
    assert host.check_output("date +%Z") == host.check_output(f"TZ={zone} date +%Z")


def test_timesyncd_is_enabled_with_the_configured_servers(host, v):
    service = host.service("systemd-timesyncd")
    assert service.is_enabled
    config = host.check_output("systemd-analyze cat-config systemd/timesyncd.conf")
    if v("common_ntp_servers"):
        assert f"NTP={' '.join(v('common_ntp_servers'))}" in config
    if in_container(host):
        # systemd itself refuses to run timesyncd in a container (ConditionVirtualization).
        assert "ConditionVirtualization=!container" in host.check_output(
            "systemctl cat systemd-timesyncd"
        )
    else:
        assert service.is_running


def test_deploy_user_has_exclusive_keys_and_sudo(host, v):
    name = v("common_deploy_user")
    user = host.user(name)
    assert user.exists
    assert user.shell == v("common_deploy_user_shell")
    keys = host.file(f"{user.home}/.ssh/authorized_keys")
    assert keys.user == name
    assert keys.mode == 0o600
    assert sorted(keys.content_string.split("\n")[:-1]) == sorted(
        v("common_deploy_authorized_keys")
    )
    sudoers = host.file("/etc/sudoers.d/stackkit-deploy")
    assert sudoers.mode == 0o440
    assert host.run(f"sudo -u {name} sudo -n true").rc == 0


def test_sshd_refuses_root_and_passwords(host, v):
    effective = host.check_output("sshd -T")
    assert "permitrootlogin no" in effective.splitlines()
    assert "passwordauthentication no" in effective.splitlines()
    assert "kbdinteractiveauthentication no" in effective.splitlines()
    assert f"port {v('common_sshd_port')}" in effective.splitlines()
    assert host.service("ssh").is_running


def test_sshd_lets_in_the_deploy_user_only_and_forwards_nothing(host, v):
    effective = host.check_output("sshd -T").splitlines()
    for setting in ("allowtcpforwarding", "allowagentforwarding", "x11forwarding", "permittunnel"):
        assert f"{setting} no" in effective, setting
    allowed = {line.split()[1] for line in effective if line.startswith("allowusers ")}
    assert allowed == {v("common_deploy_user"), *v("common_sshd_allow_users")}


def test_no_core_dumps_and_no_usb_storage(host, v):
    limits = host.file("/etc/security/limits.d/10-stackkit-core.conf").content_string.split()
    assert limits[-4:] == ["*", "hard", "core", "0"]
    coredump = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    assert "Storage=none" in coredump.splitlines()
    # Containers load no modules of their own: the rules are what a real host enforces.
    rules = host.file("/etc/modprobe.d/stackkit-blacklist.conf").content_string.splitlines()
    for module in v("common_blacklisted_modules"):
        assert f"install {module} /bin/false" in rules, module


def test_sshd_offers_public_key_authentication_only(host, v):
    """A client that has no key is told that only public keys are accepted."""
    # sshd lists the methods it allows when it turns a client away.
    refusal = host.check_output(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o PubkeyAuthentication=no -p {v('common_sshd_port')} root@127.0.0.1 true 2>&1 || true"
    )
    assert "Permission denied (publickey)." in refusal


def test_journal_size_is_limited(host, v):
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert f"SystemMaxUse={v('common_journald_system_max_use')}" in config
    assert host.service("systemd-journald").is_running


def test_unattended_upgrades_take_security_updates(host, v):
    dump = host.check_output("apt-config dump")
    enabled = "1" if v("common_unattended_upgrades_enabled") else "0"
    assert f'APT::Periodic::Unattended-Upgrade "{enabled}";' in dump
    patterns = [line for line in dump.splitlines() if "Origins-Pattern::" in line]
    assert any("security" in line for line in patterns)
    assert host.service("apt-daily-upgrade.timer").is_enabled


def test_firewall_is_active_and_drops_by_default(host, v):
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    assert host.service("nftables").is_enabled
    table = host.check_output("nft list table inet stackkit")
    assert "hook input priority filter; policy drop;" in table


def _listen(host, port: int) -> None:
    """Start a throwaway listener unless something already serves the port."""
    if host.socket(f"tcp://0.0.0.0:{port}").is_listening:
        return
    host.run(f"systemctl stop stackkit-probe-{port} || true")
    host.check_output(
        f"systemd-run --unit stackkit-probe-{port} --property RuntimeMaxSec=300 "
        f"python3 -m http.server {port} --bind 0.0.0.0"
    )
    assert wait_for(lambda: host.socket(f"tcp://0.0.0.0:{port}").is_listening, timeout=10)


def firewall_rules(host) -> list[dict]:
    """Every common_firewall_allowed* rule of this host, as the play renders them."""
    return render(
        host,
        "query('ansible.builtin.vars', *query('ansible.builtin.varnames',"
        " '^common_firewall_allowed(_.+)?$')) | flatten(levels=1)",
    )


def test_firewall_opens_declared_ports_to_declared_sources_only(host, v, inventory_hosts):
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    rules = firewall_rules(host)
    restricted = [r for r in rules if r["sources"] != ["any"] and r.get("proto", "tcp") == "tcp"]
    if not restricted:
        pytest.skip("no port on this host is restricted to some sources")
    target = address_of(host)
    for rule in restricted:
        port = int(rule["port"])
        _listen(host, port)
        peers = [p for p in inventory_hosts("all") if address_of(p) in rule["sources"]]
        assert peers, f"no inventory host is among the sources of {rule}"
        assert tcp_reachable_from(peers[0], target, port), f"{port} closed to a declared source"
        assert not tcp_reachable_from_controller(target, port), f"{port} open to the controller"


def test_a_port_open_to_anywhere_is_one_declared_so(host, v):
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    rules = firewall_rules(host)
    public = {(r.get("proto", "tcp"), int(r["port"])) for r in rules if r["sources"] == ["any"]}
    table = host.check_output("nft list table inet stackkit")
    opened = {
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^\s*(tcp|udp) dport (\d+) accept", table, re.MULTILINE)
    }
    assert opened - {("tcp", int(v("common_sshd_port")))} == public


def test_undeclared_port_is_closed_from_another_host(host, v, inventory_hosts):
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    port = 18081  # declared by no role
    _listen(host, port)
    try:
        assert tcp_reachable_from(host, "127.0.0.1", port), "the probe listener is not serving"
        target = address_of(host)
        others = [p for p in inventory_hosts("all") if address_of(p) != target]
        for peer in others[:2]:
            assert not tcp_reachable_from(peer, target, port)
        assert not tcp_reachable_from_controller(target, port)
    finally:
        host.run(f"systemctl stop stackkit-probe-{port}")


def test_kernel_settings_are_written_and_applied_where_possible(host, v):
    settings = host.file("/etc/sysctl.d/60-stackkit.conf").content_string
    for key, value in v("common_sysctl").items():
        assert f"{key} = {value}" in settings
        if not in_container(host):
            live = host.check_output(f"sysctl -n {key}").split()
            assert live == str(value).split(), key
