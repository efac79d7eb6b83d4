"""The collection's filters that the roles' preflights and container checks share: what they
call weak, public and a container, and that a role in this checkout reaches them as
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
