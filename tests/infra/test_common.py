"""The common role, on every host: packages, locale, time, deploy user, sshd, journald,
unattended upgrades, the nftables firewall and kernel settings.

The firewall checks probe ports from other hosts of the inventory and from the controller.
Ports that something already serves are probed as they are (read-only); a port nothing serves is
probed with a listener of the test's own, which makes those checks destructive."""

from __future__ import annotations

import re
import shlex
from contextlib import contextmanager

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


def test_sshd_lets_in_the_deploy_user_only_and_forwards_nothing_unnamed(host, v):
    """No forwarding at all, but the tunnels common_sshd_permit_open names (a monitor host's
    Prometheus and Alertmanager, with the kit's wiring): local forwarding to those only."""
    effective = host.check_output("sshd -T").splitlines()
    for setting in ("allowagentforwarding", "x11forwarding", "permittunnel"):
        assert f"{setting} no" in effective, setting
    tunnels = v("common_sshd_permit_open")
    if tunnels:
        assert "allowtcpforwarding local" in effective
        opened = [line.split()[1:] for line in effective if line.startswith("permitopen ")]
        assert opened == [tunnels], opened
    else:
        assert "allowtcpforwarding no" in effective
    allowed = {line.split()[1] for line in effective if line.startswith("allowusers ")}
    assert allowed == {v("common_deploy_user"), *v("common_sshd_allow_users")}


def test_the_bootstrap_account_is_locked_and_keyless(host, v):
    """The cloud image's account: password locked, expired (sshd and sudo ask PAM, which
    refuses it), its keys gone, and sshd turns it away even with the key it once had."""
    user = v("common_bootstrap_user")
    if not user or not host.user(user).exists:
        pytest.skip("this inventory names no bootstrap account, or the host has none")
    assert host.check_output(f"passwd -S {shlex.quote(user)}").split()[1] == "L"
    assert host.user(user).expiration_date is not None
    assert host.user(user).expiration_date.year == 1970
    home = host.user(user).home
    assert not host.file(f"{home}/.ssh/authorized_keys").exists
    assert user not in host.check_output("sshd -T | grep ^allowusers || true").split()


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


# Accepts connections and closes each at once: it serves nothing, reads nothing.
PROBE_LISTENER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen(16)\n"
    "while True:\n"
    "    s.accept()[0].close()\n"
)


@contextmanager
def probe_listener(host, address: str, port: int):
    """A listener on address:port for the length of one probe, as `nobody` in a transient unit
    that systemd ends after a minute at the latest; stopped on the way out whatever happens."""
    unit = f"stackkit-probe-{port}"
    host.run(f"systemctl stop {unit}")
    # Ports below 1024 need the one capability to bind, and nothing else.
    bind = " --property AmbientCapabilities=CAP_NET_BIND_SERVICE" if port < 1024 else ""
    try:
        host.check_output(
            f"systemd-run --unit {unit} --uid nobody --gid nogroup --property RuntimeMaxSec=60"
            f"{bind} --property NoNewPrivileges=yes python3 -c {shlex.quote(PROBE_LISTENER)} "
            f"{address} {port}"
        )
        listening = lambda: host.socket(f"tcp://{address}:{port}").is_listening  # noqa: E731
        assert wait_for(listening, timeout=10), f"the probe listener never bound {port}"
        yield
    finally:
        host.run(f"systemctl stop {unit}")


def served(host, address: str, port: int) -> bool:
    return any(host.socket(f"tcp://{bound}:{port}").is_listening for bound in (address, "0.0.0.0"))


def firewall_rules(host) -> list[dict]:
    """Every common_firewall_allowed* rule of this host, as the play renders them."""
    return render(
        host,
        "query('ansible.builtin.vars', *query('ansible.builtin.varnames',"
        " '^common_firewall_allowed(_.+)?$')) | flatten(levels=1)",
    )


def restricted_rules(host, v) -> list[dict]:
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    rules = firewall_rules(host)
    restricted = [r for r in rules if r["sources"] != ["any"] and r.get("proto", "tcp") == "tcp"]
    if not restricted:
        pytest.skip("no port on this host is restricted to some sources")
    return restricted


def assert_open_to_its_sources_only(host, rule: dict, inventory_hosts) -> None:
    target, port = address_of(host), int(rule["port"])
    peers = [p for p in inventory_hosts("all") if address_of(p) in rule["sources"]]
    assert peers, f"no inventory host is among the sources of {rule}"
    assert tcp_reachable_from(peers[0], target, port), f"{port} closed to a declared source"
    assert not tcp_reachable_from_controller(target, port), f"{port} open to the controller"


def test_firewall_opens_served_ports_to_declared_sources_only(host, v, inventory_hosts):
    """Read-only: the restricted ports something already listens on."""
    rules = [r for r in restricted_rules(host, v) if served(host, address_of(host), r["port"])]
    if not rules:
        pytest.skip("nothing listens on this host's restricted ports")
    for rule in rules:
        assert_open_to_its_sources_only(host, rule, inventory_hosts)


@pytest.mark.destructive
def test_firewall_opens_unserved_ports_to_declared_sources_only(host, v, inventory_hosts):
    """The restricted ports nothing listens on yet (a tier still to come), each probed with a
    listener of its own."""
    target = address_of(host)
    rules = [r for r in restricted_rules(host, v) if not served(host, target, r["port"])]
    if not rules:
        pytest.skip("every restricted port of this host is served")
    for rule in rules:
        with probe_listener(host, target, int(rule["port"])):
            assert_open_to_its_sources_only(host, rule, inventory_hosts)


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


@pytest.mark.destructive
def test_undeclared_port_is_closed_from_another_host(host, v, inventory_hosts):
    if not v("common_firewall_enabled"):
        pytest.skip("the firewall is disabled in this inventory")
    port = 18081  # declared by no role
    target = address_of(host)
    others = [p for p in inventory_hosts("all") if address_of(p) != target]
    with probe_listener(host, target, port):
        assert tcp_reachable_from(host, target, port), "the probe listener is not serving"
        for peer in others[:2]:
            assert not tcp_reachable_from(peer, target, port)
        assert not tcp_reachable_from_controller(target, port)
    assert not host.socket(f"tcp://{target}:{port}").is_listening, "the probe outlived the test"


def test_kernel_settings_are_written_and_applied_where_possible(host, v):
    settings = host.file("/etc/sysctl.d/60-stackkit.conf").content_string
    for key, value in v("common_sysctl").items():
        assert f"{key} = {value}" in settings
        if not in_container(host):
            live = host.check_output(f"sysctl -n {key}").split()
            assert live == str(value).split(), key
