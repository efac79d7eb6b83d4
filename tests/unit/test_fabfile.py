"""fabfile.py, the thin driver: how it finds hosts and the app's source, and that it reads the
inventory without the vault (stackkit.inventory, stackkit.ssh). The release steps are
catalogue-release's (see test_catalogue_release.py); both drivers run them against real hosts in
tests/infra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from invoke.exceptions import Exit
from paramiko import RejectPolicy, RSAKey

from stackkit.ssh import AcceptUnrecorded, ssh_options

ROOT = Path(__file__).resolve().parents[2]
# Loaded from its file, as `fab` loads it: the fabfile is a script, not part of the package.
_spec = importlib.util.spec_from_file_location("fabfile", ROOT / "fabfile.py")
fabfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fabfile)

INVENTORY = """\
all:
  vars:
    ansible_user: deploy
    ansible_ssh_private_key_file: /keys/id
  hosts:
    web1: {ansible_host: 10.0.0.5}
    web2: {ansible_host: 10.0.0.6, ansible_port: 2222, ansible_host_key_checking: false}
    worker1:
      ansible_host: 10.0.0.7
      ansible_ssh_common_args: -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no
    db1: {ansible_host: 10.0.0.8}
  children:
    web: {hosts: {web1: {}, web2: {}}}
    worker: {hosts: {worker1: {}, web1: {}}}
"""
# Not valid for any password: reading it would fail.
VAULT = "$ANSIBLE_VAULT;1.1;AES256\n3132\n"


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "group_vars" / "all" / "vault.yml").write_text(VAULT)
    (tmp_path / "group_vars" / "web").mkdir()
    (tmp_path / "group_vars" / "web" / "main.yml").write_text(
        'app_upstream_address: "{{ ansible_host }}:8000"\n'
    )
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    for cached in (fabfile.resolver, fabfile.connect):
        cached.cache_clear()
    return str(tmp_path)


def test_without_hosts_every_web_and_worker_host_once_in_inventory_order(inventory):
    assert fabfile.host_names(object(), inventory) == ["web1", "web2", "worker1"]


def test_connection_comes_from_the_inventory_without_the_vault(inventory):
    conn = fabfile.connect("web2", inventory)
    assert (conn.host, conn.user, conn.port) == ("10.0.0.6", "deploy", 2222)
    assert conn.connect_kwargs == {"key_filename": ["/keys/id"]}
    assert isinstance(conn.client._policy, AcceptUnrecorded)
    assert fabfile.value("web1", "app_upstream_address", inventory) == "10.0.0.5:8000"


def test_unknown_host_keys_are_refused_unless_the_inventory_says_otherwise(inventory):
    assert isinstance(fabfile.connect("web1", inventory).client._policy, RejectPolicy)


def test_ssh_options_the_inventory_hands_ssh_decide_as_they_would_for_ssh(inventory, tmp_path):
    known = tmp_path.parent / f"{tmp_path.name}.known_hosts"
    known.write_text(f"10.0.0.5 ssh-rsa {RSAKey.generate(1024).get_base64()}\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "web1.yml").write_text(
        f"ansible_ssh_extra_args: -oUserKnownHostsFile={known}\n"
    )
    conn = fabfile.connect("web1", inventory)
    assert isinstance(conn.client._policy, RejectPolicy)
    assert "10.0.0.5" in conn.client.get_host_keys()
    assert isinstance(fabfile.connect("worker1", inventory).client._policy, AcceptUnrecorded)


@pytest.mark.parametrize(
    ("common", "extra", "policy"),
    [
        ("-o StrictHostKeyChecking=yes -o StrictHostKeyChecking=no", "", RejectPolicy),
        ("-oStrictHostKeyChecking=no -oStrictHostKeyChecking=yes", "", AcceptUnrecorded),
        ("-o stricthostkeychecking=yes", "-o StrictHostKeyChecking=no", RejectPolicy),
        ("-o 'StrictHostKeyChecking no'", "-o StrictHostKeyChecking=yes", AcceptUnrecorded),
    ],
)
def test_the_first_value_of_a_repeated_ssh_option_wins_as_in_ssh(
    inventory, tmp_path, common, extra, policy
):
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "web1.yml").write_text(
        f"ansible_ssh_common_args: {common!r}\nansible_ssh_extra_args: {extra!r}\n"
    )
    assert type(fabfile.connect("web1", inventory).client._policy) is policy


def test_ssh_options_are_read_as_ssh_reads_them():
    args = ["-C", "-o", "UserKnownHostsFile=/a /b", "-oUserKnownHostsFile=/c", "-o", "Port 2"]
    assert ssh_options(args) == {"userknownhostsfile": "/a /b", "port": "2"}


def test_with_checking_off_an_unverified_key_is_written_nowhere(inventory, tmp_path):
    known = tmp_path.parent / f"{tmp_path.name}.known_hosts"
    known.write_text(f"10.0.0.99 ssh-rsa {RSAKey.generate(1024).get_base64()}\n")
    before = known.read_text()
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "worker1.yml").write_text(
        f"ansible_ssh_common_args: -o UserKnownHostsFile={known} -o StrictHostKeyChecking=no\n"
    )
    client = fabfile.connect("worker1", inventory).client
    assert "10.0.0.99" in client.get_host_keys()  # known keys are still read
    # What SSHClient.connect does with a key it does not know: ask the policy.
    client._policy.missing_host_key(client, "10.0.0.7", RSAKey.generate(1024))
    assert known.read_text() == before
    assert "10.0.0.7" not in client.get_host_keys()


def test_an_unknown_host_is_refused(inventory):
    with pytest.raises(Exit, match="stack9 is not a host"):
        fabfile.connect("stack9", inventory)


def test_the_vault_is_asked_for_only_when_a_secret_is_needed(inventory):
    with pytest.raises(Exit, match="ANSIBLE_VAULT_PASSWORD_FILE"):
        fabfile.value("web1", "app_postgres_owner_password", inventory, vault=True)


@pytest.mark.parametrize("given", ["", "app"])
def test_source_is_the_kits_root_or_its_app_directory(given):
    assert fabfile.app_source(str(ROOT / given)) == ROOT / "app"


def test_a_source_without_a_django_project_is_refused(tmp_path):
    with pytest.raises(Exit, match="neither"):
        fabfile.app_source(str(tmp_path))
