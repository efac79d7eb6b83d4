"""Fabric driver of the catalogue's release protocol (catalogue-release, installed by roles/app).

    fab deploy                    every host of the web and worker groups, one at a time
    fab -H web1 deploy            one host, named as in the inventory
    fab deploy --source ../branch     another checkout (its root or its app/ directory)
    fab status | fab rollback     the same hosts, the same way

Hosts and how to reach them come from the Ansible inventory (`inventories/local` unless
STACKKIT_INVENTORY or --inventory names another), read as Ansible reads it (stackkit.inventory,
stackkit.ssh). The steps are the role's: build with roles/app/files/build_release.py, then on
each host `catalogue-release install`, `migrate` (once per release), `activate` (out of every
nginx while it restarts) and `prune`. The vault is opened only when migrations are pending and
the schema owner's password is needed: shipping code needs no secret.
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

from fabric import Connection, task
from invoke.exceptions import Exit

from stackkit.inventory import PlayVars, UnresolvedVariable, vault_password_file
from stackkit.ssh import connection, install_file

ROOT = Path(__file__).resolve().parent
RELEASE = "/usr/local/bin/catalogue-release"
_MIGRATED: set[str] = set()  # releases migrated by this `fab` run (-H a,b calls a task per host)


@cache
def resolver(path: str | None, vault: bool = False) -> PlayVars:
    source = str(ROOT / (path or os.environ.get("STACKKIT_INVENTORY") or "inventories/local"))
    password = vault_password_file(source) if vault else None
    if vault and not password:
        raise Exit("Migrations are pending: set ANSIBLE_VAULT_PASSWORD_FILE (owner's password).")
    return PlayVars(source, vault_password_file=password, vault=vault)


def value(name: str, expression: str, inv: str | None, vault: bool = False):
    """A Jinja expression evaluated with the host's variables, as a play would see them."""
    try:
        return resolver(inv, vault).render(name, expression, facts=False)
    except UnresolvedVariable as error:  # an unknown host, an undefined variable
        raise Exit(str(error)) from None


def host_names(c, inv: str | None) -> list[str]:
    if isinstance(c, Connection):
        return [c.host]
    return list(dict.fromkeys(h for g in ("web", "worker") for h in resolver(inv).hostnames(g)))


@cache
def connect(name: str, inv: str | None) -> Connection:
    """SSH as Ansible would, host keys checked as it checks them (stackkit.ssh)."""
    value(name, "inventory_hostname", inv)  # an unknown host ends the run, naming it
    return connection(resolver(inv), name)


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


def deploy_host(name: str, source: Path, inv: str | None) -> None:
    conn = connect(name, inv)
    facts = release(conn, "status", "--json")
    built = build(source, facts["python"], facts["arch"])
    release_id = built["release_id"]
    if release_id not in facts["releases"]:
        archives = (Path(built["archive"]), Path(built["wheelhouse"]))
        paths = [install_file(conn, path, facts["archives"]) for path in archives]
        release(conn, "install", *paths)
    if release_id not in _MIGRATED:
        pending = release(conn, "migrate", release_id, "--check", ok=(0, 1))["rc"] == 1
        owner = pending and facts["migrate_owner"]
        secret = str(value(name, "app_postgres_owner_password", inv, vault=True)) if owner else ""
        release(conn, "migrate", release_id, in_stream=io.StringIO(secret and secret + "\n"))
        _MIGRATED.add(release_id)
    webs = resolver(inv).hostnames("web")
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
