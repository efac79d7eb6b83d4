"""Fabric driver of the catalogue's release protocol (catalogue-release, installed by roles/app).

    fab deploy                    every host of the web and worker groups, one at a time
    fab -H web1 deploy            one host, named as in the inventory
    fab deploy --source ../branch     another checkout (its root or its app/ directory)
    fab status | fab rollback     the same hosts, the same way

Hosts, addresses, users, ports and keys come from the Ansible inventory (`inventories/local`
unless STACKKIT_INVENTORY or --inventory names another); host keys are checked as Ansible
checks them. The steps are the role's: build with roles/app/files/build_release.py, then on
each host `catalogue-release install`, `migrate` (once per release), `activate` (with the host
out of every nginx while it restarts) and `prune`. The vault is opened only when migrations are
pending and the schema owner's password is needed: shipping code needs no secret.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import get_file_vault_secret, is_encrypted_file
from ansible.template import Templar, trust_as_template
from ansible.vars.manager import VariableManager
from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko import MissingHostKeyPolicy, RejectPolicy

ROOT = Path(__file__).resolve().parent
RELEASE = "/usr/local/bin/catalogue-release"
GROUPS = ("web", "worker")
LOCAL_VAULT_PASSWORD = ROOT / "tests" / "hosts" / "local-vault-password"
_MIGRATED: set[str] = set()  # releases migrated by this `fab` run (-H a,b calls a task per host)


class _SkipVault(DataLoader):
    """Reads the inventory without the vault: encrypted files count as empty."""

    def load_from_file(self, file_name, *args, **kwargs):
        with open(file_name, "rb") as handle:
            if is_encrypted_file(handle):
                return {}
        return super().load_from_file(file_name, *args, **kwargs)


@cache
def inventory(path: str | None, vault: bool = False) -> tuple[InventoryManager, VariableManager]:
    source = str(ROOT / (path or os.environ.get("STACKKIT_INVENTORY") or "inventories/local"))
    loader = DataLoader() if vault else _SkipVault()
    if vault:
        password = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE") or (
            str(LOCAL_VAULT_PASSWORD) if source.endswith("inventories/local") else None
        )
        if not password:
            raise Exit(
                "Migrations are pending: set ANSIBLE_VAULT_PASSWORD_FILE for the owner's password."
            )
        secret = get_file_vault_secret(filename=password, vault_id="default", loader=loader)
        secret.load()
        loader.set_vault_secrets([("default", secret)])
    hosts = InventoryManager(loader=loader, sources=[source])
    return hosts, VariableManager(loader=loader, inventory=hosts)


def value(name: str, expression: str, inv: str | None, vault: bool = False):
    """A Jinja expression evaluated with the host's variables, as a play would see them."""
    hosts, variables = inventory(inv, vault)
    host = hosts.get_host(name)
    if host is None:
        raise Exit(f"{name} is not a host of the inventory.")
    templar = Templar(loader=variables._loader, variables=variables.get_vars(host=host))
    return templar.evaluate_expression(trust_as_template(expression))


def host_names(c, inv: str | None) -> list[str]:
    if isinstance(c, Connection):
        return [c.host]
    hosts, _ = inventory(inv)
    return list(dict.fromkeys(h.name for g in GROUPS for h in hosts.get_hosts(pattern=g)))


class AcceptUnrecorded(MissingHostKeyPolicy):
    """Host key checking off: an unknown key is accepted for this connection and recorded
    nowhere, so no later run (Fabric's or ssh's) trusts a key that nobody verified."""

    def missing_host_key(self, client, hostname, key):
        return None


def ssh_options(args: list[str]) -> dict[str, str]:
    """The -o options of an ssh command line, keyed in lower case, as ssh reads them: the first
    value of an option wins, `-o Key=Value`, `-oKey=Value` and `-o "Key Value"` alike."""
    options: dict[str, str] = {}
    words = iter(args)
    for word in words:
        if word == "-o":
            option = next(words, "")
        elif word.startswith("-o"):
            option = word[2:]
        else:
            continue
        key, _, val = option.strip().replace("=", " ", 1).partition(" ")
        if key:
            options.setdefault(key.lower(), val.strip())
    return options


@cache
def connect(name: str, inv: str | None) -> Connection:
    """SSH as Ansible would: ansible_host, _user, _port, the key; unknown host keys refused
    unless the inventory turns host key checking off (ansible_host_key_checking, or the
    StrictHostKeyChecking option it hands ssh), as it does for throwaway local hosts. Known
    keys are read, never written: with checking off an unknown key is used once, not saved."""
    get = lambda expr: value(name, expr, inv)  # noqa: E731
    key = get("ansible_ssh_private_key_file | default(ansible_private_key_file) | default('')")
    conn = Connection(
        host=str(get("ansible_host | default(inventory_hostname)")),
        user=str(get("ansible_user | default(ansible_ssh_user) | default('')") or "") or None,
        port=int(get("ansible_port | default(ansible_ssh_port) | default(22)")),
        connect_kwargs={"key_filename": str(key)} if key else {},
    )
    checking = get(
        "ansible_host_key_checking | default(ansible_ssh_host_key_checking)"
        " | default(lookup('env', 'ANSIBLE_HOST_KEY_CHECKING') or True) | bool"
    )
    ssh_args = (get(f"ansible_ssh_{kind}_args | default('')") for kind in ("common", "extra"))
    options = ssh_options(shlex.split(" ".join(map(str, ssh_args))))
    if options.get("stricthostkeychecking", "yes").lower() in ("no", "off"):
        checking = False  # what ssh itself does with the arguments Ansible hands it
    for known in options.get("userknownhostsfile", "~/.ssh/known_hosts").split():
        path = Path(known).expanduser()
        if path.is_file():
            # HostKeys.load, not client.load_host_keys: the latter makes the file the one
            # paramiko saves newly accepted keys to.
            conn.client.get_host_keys().load(str(path))
    conn.client.set_missing_host_key_policy(RejectPolicy() if checking else AcceptUnrecorded())
    return conn


def release(conn: Connection, *args: str, ok: tuple = (0,), **kwargs) -> dict:
    """Run catalogue-release; its failure (naming the step) ends the run with its message."""
    result = conn.sudo(f"{RELEASE} {shlex.join(args)}", warn=True, hide=True, **kwargs)
    if result.return_code not in ok:
        raise Exit(f"{conn.host}: {result.stderr.strip() or result.stdout.strip()}", code=1)
    *said, last = result.stdout.strip().splitlines() or [""]
    for line in filter(None, said):
        print(f"{conn.host}: {line}")
    return json.loads(last) if last.startswith("{") else {"rc": result.return_code}


@cache
def build(source: Path, python: str, arch: str) -> dict:
    """What the role builds, with the role's builder: release id, archive, wheelhouse."""
    builder = [sys.executable, str(ROOT / "roles/app/files/build_release.py"), "--source"]
    builder += [str(source), "--out", str(ROOT / ".cache/releases"), "--python", python, "--arch"]
    return json.loads(subprocess.run([*builder, arch], check=True, capture_output=True).stdout)


def app_source(source: str | None) -> Path:
    path = Path(source or ROOT / "app").resolve()
    path = path / "app" if (path / "app" / "manage.py").is_file() else path
    if not (path / "manage.py").is_file():
        raise Exit(f"{path} is neither the kit's root nor its app/ directory.")
    return path


def upload(conn: Connection, local: Path, directory: str) -> str:
    """To a fresh mktemp file as the SSH user; root moves it under the archives directory."""
    remote = conn.run("mktemp", hide=True).stdout.strip()
    conn.put(str(local), remote, preserve_mode=False)
    conn.sudo(f"install -o root -g root -m 0644 {remote} {directory}/{local.name}", hide=True)
    conn.run(f"rm -f {remote}", hide=True)
    return f"{directory}/{local.name}"


def deploy_host(name: str, source: Path, inv: str | None) -> None:
    conn = connect(name, inv)
    facts = release(conn, "status", "--json")
    built = build(source, facts["python"], facts["arch"])
    release_id = built["release_id"]
    if release_id not in facts["releases"]:
        archives = (Path(built["archive"]), Path(built["wheelhouse"]))
        paths = [upload(conn, path, facts["archives"]) for path in archives]
        release(conn, "install", *paths)
    if release_id not in _MIGRATED:
        pending = release(conn, "migrate", release_id, "--check", ok=(0, 1))["rc"] == 1
        secret = ""
        if pending and facts["migrate_owner"]:
            secret = str(value(name, "app_postgres_owner_password", inv, vault=True))
        release(conn, "migrate", release_id, in_stream=io.StringIO(secret and secret + "\n"))
        _MIGRATED.add(release_id)
    hosts, _ = inventory(inv)
    webs = [h.name for h in hosts.get_hosts(pattern="web")]
    address = value(name, "app_upstream_address | default('')", inv)
    drain = facts["current"] != release_id and bool(address) and name in webs and len(webs) > 1
    for web in webs if drain else []:  # out of every nginx while it restarts
        release(connect(web, inv), "drain", address)
    try:
        release(conn, "activate", release_id)
    finally:
        for web in webs if drain else []:
            release(connect(web, inv), "undrain", address)
    release(conn, "prune")


@task(help={"source": "another checkout: its root or its app/", "inventory": "inventory path"})
def deploy(c, source=None, inventory=None):
    """Build the release, install it on each host, migrate once, switch one host at a time."""
    for name in host_names(c, inventory):
        deploy_host(name, app_source(source), inventory)


@task(help={"inventory": "inventory path"})
def rollback(c, inventory=None):
    """Back to the previous release, one host at a time."""
    for name in host_names(c, inventory):
        release(connect(name, inventory), "rollback")


@task(help={"inventory": "inventory path"})
def status(c, inventory=None):
    """The live and previous release and the state of the app's units on each host."""
    for name in host_names(c, inventory):
        print(f"== {name}")
        connect(name, inventory).sudo(f"{RELEASE} status")
