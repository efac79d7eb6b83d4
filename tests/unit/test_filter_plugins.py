"""The collection's filters that the roles share: what they call weak, public and a container,
the systemd sandbox of their units, and that a role in this checkout reaches them as
stackkit.kit (ansible.cfg's collections_path), just as a role inside the built collection does.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[2]


def filters() -> dict:
    source = ROOT / "plugins" / "filter" / "stackkit.py"
    spec = importlib.util.spec_from_file_location("stackkit_filters", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


FILTERS = filters()
weak_secrets = FILTERS["weak_secrets"]
public_addresses = FILTERS["public_addresses"]
in_container = FILTERS["in_container"]
systemd_sandbox = FILTERS["systemd_sandbox"]


def test_short_and_placeholder_secrets_are_weak_by_name_in_order():
    secrets = {
        "fifteen": "x" * 15,
        "sixteen": "x" * 16,
        "placeholder": "replace-with-a-long-random-value",
        "shouting": "REPLACE-ME-AS-WELL-PLEASE",
        "empty": "",
        "number": 1234567890123456,
        "multiline": "short\n",
    }
    assert weak_secrets(secrets) == ["fifteen", "placeholder", "shouting", "empty", "multiline"]


def test_a_list_of_users_is_judged_by_its_password_and_named_by_its_name():
    users = [
        {"name": "app", "password": "a" * 20},
        {"name": "reader", "password": "short"},
        {"name": "nopassword"},
        {"password": "replace-me-xxxxxxxxxxxx"},
    ]
    assert weak_secrets(users, name="name", secret="password") == ["reader", "nopassword", "?"]


def test_anything_but_secrets_by_name_is_refused():
    with pytest.raises(AnsibleFilterError, match="mapping"):
        weak_secrets("a-long-enough-secret-value")


def test_only_globally_routable_addresses_are_public():
    values = ["8.8.8.8", "10.0.0.5", "127.0.0.1", "0.0.0.0", "::", "fe80::1", "2001:4860::8888"]
    values += ["100.64.0.1", "192.0.2.1", "redis.example.com", ""]
    assert public_addresses(values) == ["8.8.8.8", "2001:4860::8888"]


def test_a_single_address_is_a_list_of_one():
    assert public_addresses("1.1.1.1") == ["1.1.1.1"]
    assert public_addresses("192.168.1.1") == []


@pytest.mark.parametrize("kind", ["docker", "podman", "lxc", "systemd-nspawn"])
def test_a_container_guest_is_a_container(kind):
    assert in_container({"virtualization_role": "guest", "virtualization_type": kind}) is True


@pytest.mark.parametrize("facts", [("guest", "kvm"), ("host", "docker"), ("host", "kvm")])
def test_a_virtual_machine_or_a_container_host_is_no_container(facts):
    role, kind = facts
    assert in_container({"virtualization_role": role, "virtualization_type": kind}) is False


def test_missing_virtualization_facts_are_no_container():
    assert in_container({}) is False


def directives(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.split("\n")]


def test_the_sandbox_without_differences_is_the_unprivileged_baseline():
    lines = directives(systemd_sandbox({}))
    assert lines[0] == ("UMask", "0027")
    assert ("CapabilityBoundingSet", "") in lines
    assert ("NoNewPrivileges", "yes") in lines
    assert ("ProtectSystem", "strict") in lines
    assert ("MemoryDenyWriteExecute", "yes") in lines
    assert [v for k, v in lines if k == "SystemCallFilter"] == [
        "@system-service",
        "~@privileged @resources",
    ]
    assert not {"ReadWritePaths", "IPAddressDeny", "ProcSubset"} & {k for k, _ in lines}
    assert systemd_sandbox(None) == systemd_sandbox({})


def test_a_units_differences_replace_drop_and_place_directives():
    lines = directives(
        systemd_sandbox(
            {
                "UMask": "0077",
                "MemoryDenyWriteExecute": None,
                "PrivateUsers": False,
                "ReadWritePaths": ["/var/lib/x", "/var/log/x"],
                "IPAddressDeny": [],
                "SystemCallFilter": ["@system-service", "~@privileged"],
                "Delegate": True,
            }
        )
    )
    keys = [k for k, _ in lines]
    assert lines[0] == ("UMask", "0077")
    assert "MemoryDenyWriteExecute" not in keys and "IPAddressDeny" not in keys
    assert ("PrivateUsers", "no") in lines
    # ReadWritePaths stands right after ProtectSystem, in one line.
    assert keys[keys.index("ProtectSystem") + 1] == "ReadWritePaths"
    assert ("ReadWritePaths", "/var/lib/x /var/log/x") in lines
    assert [v for k, v in lines if k == "SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert lines[-1] == ("Delegate", "yes")


@pytest.mark.parametrize("bad", [["UMask=0077"], "UMask=0077"])
def test_the_sandbox_takes_a_mapping(bad):
    with pytest.raises(AnsibleFilterError, match="mapping"):
        systemd_sandbox(bad)


def test_the_sandbox_refuses_what_is_no_directive():
    with pytest.raises(AnsibleFilterError, match="not a systemd directive"):
        systemd_sandbox({"umask\nExecStartPre=/bin/sh": "0077"})


# The one unit template that restates directives of the sandbox by hand, and which: the redis
# drop-in keeps two essentials of the distribution's own sandbox from resting on it.
BY_HAND = {
    "roles/redis/templates/etc/systemd/system/redis-server.service.d/50-stackkit.conf.j2": [
        "CapabilityBoundingSet",
        "NoNewPrivileges",
    ],
}


def test_every_unit_template_takes_its_sandbox_from_the_filter():
    """The sandbox is written once: no unit template spells out one of its directives by hand,
    but the exceptions above, exactly."""
    names = {line.split("=", 1)[0] for line in systemd_sandbox({}).split("\n")}
    by_hand = {}
    for path in sorted(ROOT.glob("roles/*/templates/etc/systemd/system/**/*.j2")):
        written = [
            line.split("=", 1)[0]
            for line in path.read_text().splitlines()
            if line.split("=", 1)[0] in names and "=" in line
        ]
        if written:
            by_hand[str(path.relative_to(ROOT))] = written
    assert by_hand == BY_HAND


def test_a_play_in_the_checkout_calls_the_filters_by_their_fqcn(tmp_path):
    expression = (
        "{{ [{'a': 'short', 'b': 'b' * 16} | stackkit.kit.weak_secrets,"
        " ['8.8.8.8', '10.0.0.1'] | stackkit.kit.public_addresses,"
        " {'virtualization_role': 'guest', 'virtualization_type': 'docker'}"
        " | stackkit.kit.in_container] | to_json }}"
    )
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [{"ansible.builtin.debug": {"msg": expression}}],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "PATH": ""}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "play.yml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '[["a"], ["8.8.8.8"], true]' in result.stdout
