"""One-shot deploy of the catalogue with Fabric: what the app role of playbooks/deploy.yml does.

    fab -H deploy@10.0.0.5 deploy      # build app/, ship it, migrate, switch, restart
    fab -H deploy@10.0.0.5 deploy --source ../branch/app   # another checkout of the project
    fab -H deploy@10.0.0.5 rollback    # back to the previous release
    fab -H deploy@10.0.0.5 status      # live and previous release, state of the units

Hosts are matched in the Ansible inventory by name or `ansible_host`; the inventory is
`inventories/local` unless STACKKIT_INVENTORY or `--inventory` names another. Every value (paths,
account, releases kept, the environment file) is the one Ansible would use for that host: the
role's defaults overlaid by the inventory, vault included (ANSIBLE_VAULT_PASSWORD_FILE). Paths,
names and completion markers are the role's, so Ansible and Fabric can take turns on a host.

The host must have been provisioned once by playbooks/site.yml (service account, catalogue.target,
/usr/local/bin/catalogue-manage); the remote user needs passwordless sudo. With several hosts
(`fab -H a,b deploy`) the first one migrates the database for all, as `run_once` does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from shlex import quote

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import get_file_vault_secret
from ansible.template import Templar, trust_as_template
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager
from fabric import task
from invoke.exceptions import Exit

ROOT = Path(__file__).resolve().parent
ROLE = ROOT / "roles" / "app"
DEFAULT_INVENTORY = "inventories/local"
# The Makefile uses this committed password for the local hosts' throwaway vault only.
LOCAL_VAULT_PASSWORD = ROOT / "tests" / "hosts" / "local-vault-password"
# What Ansible's template module puts in `ansible_managed` unless the inventory says otherwise.
ANSIBLE_MANAGED = "Ansible managed"
MANAGE = "/usr/local/bin/catalogue-manage"
TARGET = "catalogue.target"
MARKER = ".stackkit-complete"
WAIT_SECONDS = 60
SECRETS = (
    "app_postgres_password",
    "app_redis_password",
    "app_rabbitmq_password",
    "app_mongodb_password",
)
# Run by the host's Python: the version and CPU the wheelhouse must be built for.
PLATFORM_PROBE = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"
# Run by the host's Python (curl may be absent): gunicorn binds the address its config names.
HEALTH_PROBE = """\
import re, sys, time, urllib.request
conf, host, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
bind = re.search(r'^bind = \\["(.+?)"\\]', open(conf).read(), re.M).group(1)
url = "http://" + bind + "/healthz"
deadline = time.monotonic() + seconds
while True:
    try:
        request = urllib.request.Request(url, headers={"Host": host})
        if urllib.request.urlopen(request, timeout=5).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("gunicorn did not answer " + url)
    time.sleep(1)
"""
# Releases that ran their migrations in this `fab` run (see _first_to_ship).
_MIGRATED: set[str] = set()


@dataclass(frozen=True)
class Target:
    """What the app role would use on one host, read from the inventory."""

    root: str
    config_dir: str
    group: str
    python: str
    keep_releases: int
    source_dir: Path
    build_dir: Path
    migrate: bool
    owner_user: str
    owner_password: str
    reindex: bool
    web_unit: str
    gunicorn_config: str
    probe_host: str
    environment: bytes


@dataclass(frozen=True)
class Build:
    """A release and its wheelhouse as roles/app/files/build_release.py names them."""

    release_id: str
    archive: Path
    wheelhouse_id: str
    wheelhouse: Path


# -- what Ansible knows about the host -----------------------------------------------------------
def inventory_path(inventory: str | None) -> Path:
    """The option wins over STACKKIT_INVENTORY; relative paths are relative to the kit."""
    return ROOT / (inventory or os.environ.get("STACKKIT_INVENTORY") or DEFAULT_INVENTORY)


def vault_loader(inventory: Path) -> DataLoader:
    """A loader that opens the vault the way the Makefile sets it up for ansible-playbook."""
    loader = DataLoader()
    password_file = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    if not password_file and inventory == ROOT / DEFAULT_INVENTORY:
        password_file = str(LOCAL_VAULT_PASSWORD)
    if password_file:
        secret = get_file_vault_secret(filename=password_file, vault_id="default", loader=loader)
        secret.load()
        loader.set_vault_secrets([("default", secret)])
    return loader


def host_templar(host: str, inventory: Path) -> Templar:
    """Variables of `host` in the order a play sees them: role defaults, then the inventory."""
    loader = vault_loader(inventory)
    hosts = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=hosts)
    # Registers itself with the variable manager: the inventory's templates use `hostvars`.
    HostVars(inventory=hosts, variable_manager=variables, loader=loader)
    layers: dict = {}
    for role in ("gunicorn", "app"):
        path = ROOT / "roles" / role / "defaults" / "main.yml"
        layers |= loader.load_from_file(str(path), trusted_as_template=True)
    layers |= {"role_path": str(ROLE), "ansible_managed": ANSIBLE_MANAGED}
    layers |= variables.get_vars(host=find_host(hosts, host, inventory))
    return Templar(loader=loader, variables=layers)


def find_host(hosts: InventoryManager, host: str, inventory: Path):
    """`fab -H` names an address or an inventory name; both identify the host."""
    for candidate in hosts.get_hosts():
        if host in (candidate.name, candidate.vars.get("ansible_host")):
            return candidate
    raise Exit(f"{host} is neither a host nor an ansible_host of the inventory {inventory}.")


def render_environment(templar: Templar) -> bytes:
    """templates/catalogue.env.j2 rendered with the template module's settings, byte for byte."""
    source = Path(str(templar.resolve_variable_expression("app_env_template")))
    text = trust_as_template(source.read_text())
    overrides = {"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"}
    return str(templar.template(text, escape_backslashes=False, overrides=overrides)).encode()


def preflight(templar: Templar) -> None:
    """The role's secret checks: an empty secret or a quote would write a broken environment."""
    value = templar.resolve_variable_expression
    values = {name: str(value(name)) for name in ("app_secret_key", *SECRETS)}
    values |= {name: str(v) for name, v in value("app_extra_environment").items()}
    if len(values["app_secret_key"]) < 32 or not all(values[name] for name in SECRETS):
        raise Exit(f"app_secret_key (32 characters or more) and {', '.join(SECRETS)} must be set.")
    for name, text in values.items():
        if "'" in text or "\n" in text:
            raise Exit(f"{name} must not contain a single quote or a newline.")


def probe_host(allowed_hosts: list) -> str:
    """A Host header Django accepts: the first allowed host, as a name ('.x.org' -> 'x.org')."""
    first = str(allowed_hosts[0]).lstrip(".") if allowed_hosts else "localhost"
    return "localhost" if first in ("", "*") else first


@cache
def load_target(host: str, inventory: str | None = None) -> Target:
    """Everything the tasks need about a host, read once per host and inventory."""
    templar = host_templar(host, inventory_path(inventory))
    preflight(templar)
    value = templar.resolve_variable_expression
    return Target(
        root=str(value("app_root")),
        config_dir=str(value("app_config_dir")),
        group=str(value("app_group")),
        python=str(value("app_python")),
        keep_releases=int(value("app_keep_releases")),
        source_dir=Path(str(value("app_source_dir"))).resolve(),
        build_dir=Path(str(value("app_build_dir"))).resolve(),
        migrate=bool(value("app_migrate")),
        owner_user=str(value("app_postgres_owner_user")),
        owner_password=str(value("app_postgres_owner_password")),
        reindex=bool(value("app_reindex_on_deploy")),
        web_unit=str(value("gunicorn_service_name")),
        gunicorn_config=f"{value('gunicorn_config_dir')}/gunicorn.conf.py",
        probe_host=probe_host(value("app_allowed_hosts")),
        environment=render_environment(templar),
    )


# -- the release, built on the controller --------------------------------------------------------
@cache
def release_builder():
    """The role's own builder, imported from its path: one definition of what a release is."""
    spec = importlib.util.spec_from_file_location("build_release", ROLE / "files/build_release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_release(target: Target, python: str, arch: str) -> Build:
    """What `build_release.py --python X.Y --arch ARCH` builds, as the role runs it."""
    builder = release_builder()
    target.build_dir.mkdir(parents=True, exist_ok=True)
    release_id, archive = builder.build_code(target.source_dir, target.build_dir)
    wheelhouse_id, wheelhouse = builder.build_wheelhouse(
        target.source_dir / "requirements.txt", target.build_dir, python, arch
    )
    return Build(release_id, archive.resolve(), wheelhouse_id, wheelhouse.resolve())


# -- steps on the host ---------------------------------------------------------------------------
def host_platform(c, target: Target) -> tuple[str, str]:
    """The Python X.Y and CPU of the interpreter the release's virtualenv is made with."""
    python, arch = c.run(f"{target.python} -c {quote(PLATFORM_PROBE)}", hide=True).stdout.split()
    return python, arch


def check_provisioned(c) -> None:
    """Fabric ships releases; the account, target and wrapper come from playbooks/site.yml."""
    if c.run(f"test -x {MANAGE}", warn=True).failed:
        raise Exit(f"{MANAGE} is missing: provision the host with playbooks/site.yml first.")


def create_directories(c, target: Target) -> None:
    """The role's directories, owners and modes: root owns the code, the app only reads it."""
    dirs = [target.root, *(f"{target.root}/{d}" for d in ("releases", "wheelhouse", "archives"))]
    c.sudo(f"install -d -o root -g root -m 0755 {' '.join(map(quote, dirs))}")
    c.sudo(f"install -d -o root -g {quote(target.group)} -m 0750 {quote(target.config_dir)}")


def is_complete(c, directory: str) -> bool:
    """A marker is written last: a directory without one is an interrupted install."""
    return c.run(f"test -e {quote(directory)}/{MARKER}", warn=True).ok


def mark_complete(c, directory: str, content: str) -> None:
    """The marker holds the id followed by a newline, as the role's copy task writes it."""
    line = quote(f"umask 022 && echo {content} > {quote(f'{directory}/{MARKER}')}")
    c.sudo(f"sh -c {line}")


def upload(c, local) -> str:
    """Upload to a fresh mktemp file (mode 0600) as the remote user; root moves it on."""
    remote = c.run("mktemp", hide=True).stdout.strip()
    c.put(local, remote, preserve_mode=False)
    return remote


def unpack(c, archive: Path, directory: str) -> None:
    """Unpack an archive into a root-owned directory, as the role's unarchive does."""
    remote = upload(c, str(archive))
    c.sudo(f"install -d -o root -g root -m 0755 {quote(directory)}")
    c.sudo(f"tar -xf {quote(remote)} -C {quote(directory)}")
    c.run(f"rm -f {quote(remote)}")


def install_release(c, target: Target, release: str, wheelhouse: str) -> None:
    """A virtualenv from the wheelhouse only (no index), static files and bytecode."""
    venv = f"{release}/.venv"
    c.sudo(f"{target.python} -m venv --clear {venv}")
    c.sudo(
        f"env PIP_CONFIG_FILE=/dev/null {venv}/bin/pip install --quiet"
        f" --disable-pip-version-check --no-index --find-links {wheelhouse}"
        f" --only-binary=:all: --no-deps --require-hashes --requirement {release}/requirements.txt"
    )
    # Static files need no service and no secret: the base settings suffice.
    c.sudo(
        f"env --chdir={release} DJANGO_SETTINGS_MODULE=catalogue_site.settings.base"
        f" PYTHONDONTWRITEBYTECODE=1 {venv}/bin/python manage.py collectstatic --noinput"
    )
    c.sudo(f"{venv}/bin/python -m compileall -q {release}")


def write_environment(c, target: Target) -> bool:
    """Upload the environment file only when it differs: a change means a restart."""
    dest = f"{target.config_dir}/catalogue.env"
    found = c.sudo(f"sha256sum {quote(dest)}", warn=True, hide=True).stdout.split()
    if found[:1] == [hashlib.sha256(target.environment).hexdigest()]:
        return False
    remote = upload(c, io.BytesIO(target.environment))
    c.sudo(f"install -o root -g {quote(target.group)} -m 0640 {quote(remote)} {quote(dest)}")
    c.run(f"rm -f {quote(remote)}")
    return True


def read_link(c, path: str) -> str | None:
    """Where a link points, or None when there is no link."""
    result = c.run(f"readlink {quote(path)}", warn=True, hide=True)
    return result.stdout.strip() if result.ok else None


def point(c, link: str, directory: str) -> None:
    """Replace a link by a rename: a process sees the old release or the new one, never none."""
    c.sudo(f"ln -sfn {quote(directory)} {quote(link)}.tmp")
    c.sudo(f"mv -T {quote(link)}.tmp {quote(link)}")


def first_to_ship(release: str) -> bool:
    """Fabric runs `-H a,b` host after host in this process: the first one migrates for all."""
    first = release not in _MIGRATED
    _MIGRATED.add(release)
    return first


def manage(c, release: str, *command: str) -> None:
    """catalogue-manage with the new release's code, before any host switches to it."""
    c.sudo(f"env CATALOGUE_RELEASE={quote(release)} {MANAGE} {' '.join(command)}")


def migrate(c, target: Target, release: str) -> None:
    """Migrate as the schema's owner when the inventory names one: its password goes on
    standard input, as the app role passes it, never into a file or a command line."""
    if not target.owner_user:
        manage(c, release, "migrate", "--noinput")
        return
    env = f"CATALOGUE_RELEASE={quote(release)} POSTGRES_OWNER_USER={quote(target.owner_user)}"
    c.sudo(
        f"env {env} {MANAGE} migrate --noinput",
        in_stream=io.StringIO(target.owner_password + "\n"),
    )


def restart(c, target: Target) -> None:
    """Restart every process of the app, then wait until the target and gunicorn answer."""
    c.sudo(f"systemctl restart {TARGET}")
    wait = f"until systemctl is-active --quiet {TARGET}; do sleep 1; done"
    if c.run(f"timeout {WAIT_SECONDS} sh -c {quote(wait)}", warn=True).failed:
        raise Exit(f"{TARGET} is not active after {WAIT_SECONDS} s: systemctl status {TARGET}")
    if c.run(f"test -e /etc/systemd/system/{target.web_unit}.service", warn=True).ok:
        args = [target.gunicorn_config, target.probe_host, str(WAIT_SECONDS)]
        c.sudo(f"{target.python} -c {quote(HEALTH_PROBE)} {' '.join(map(quote, args))}")


def prune(c, target: Target, keep: list[str], wheelhouse: str) -> None:
    """Keep app_keep_releases releases (the live and previous ones included, the newest
    others) and only the live release's wheelhouse: a rollback needs no installation."""
    listing = c.run(
        f"find {target.root}/releases -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\\n'",
        hide=True,
    ).stdout.splitlines()
    by_age = [line.split(" ", 1)[1] for line in sorted(listing, key=lambda x: float(x.split()[0]))]
    others = [path for path in by_age if path not in keep]
    stale = others[: max(len(others) - (target.keep_releases - 2), 0)]
    wheelhouses = c.run(
        f"find {target.root}/wheelhouse -mindepth 1 -maxdepth 1 -type d", hide=True
    ).stdout.split()
    stale += [path for path in wheelhouses if path != wheelhouse]
    if stale:
        c.sudo(f"rm -rf {' '.join(map(quote, stale))}")


# -- tasks ---------------------------------------------------------------------------------------
@task(help={"source": "another checkout of the Django project to deploy instead of app/"})
def deploy(c, inventory=None, source=None):
    """Build app/, ship what the host lacks, migrate, switch to it and restart the app."""
    target = load_target(c.host, inventory)
    if source:
        target = replace(target, source_dir=Path(source).resolve())
    check_provisioned(c)
    build = build_release(target, *host_platform(c, target))
    release = f"{target.root}/releases/{build.release_id}"
    wheelhouse = f"{target.root}/wheelhouse/{build.wheelhouse_id}"
    create_directories(c, target)
    if not is_complete(c, wheelhouse):
        unpack(c, build.wheelhouse, wheelhouse)
        mark_complete(c, wheelhouse, build.wheelhouse_id)
    if not is_complete(c, f"{release}/.venv"):
        unpack(c, build.archive, release)
        install_release(c, target, release, wheelhouse)
        mark_complete(c, f"{release}/.venv", build.release_id)
    changed = write_environment(c, target)
    live = read_link(c, f"{target.root}/current")
    previous = read_link(c, f"{target.root}/previous")
    if first_to_ship(release):
        if target.migrate:
            migrate(c, target, release)
        if target.reindex and live != release:
            manage(c, release, "reindex")
    if live != release:
        if live:
            point(c, f"{target.root}/previous", live)
            previous = live
        point(c, f"{target.root}/current", release)
    if live != release or changed:
        restart(c, target)
    else:
        print(f"{c.host}: release {build.release_id} is already live")
    prune(c, target, [release, previous], wheelhouse)


@task
def rollback(c, inventory=None):
    """Swap the live and the previous release (a rollback of a rollback goes forward again)."""
    target = load_target(c.host, inventory)
    current, previous = f"{target.root}/current", f"{target.root}/previous"
    live, before = read_link(c, current), read_link(c, previous)
    if before is None or c.run(f"test -e {quote(before)}", warn=True).failed:
        raise Exit(f"{previous} does not point at a release: nothing to roll back to.")
    point(c, current, before)
    if live:
        point(c, previous, live)
    restart(c, target)


@task
def status(c, inventory=None):
    """Print the live and the previous release and the state of the app's units."""
    target = load_target(c.host, inventory)
    for name in ("current", "previous"):
        link = read_link(c, f"{target.root}/{name}")
        print(f"{name}: {Path(link).name if link else 'none'}")
    state = c.run(f"systemctl is-active {TARGET}", warn=True, hide=True).stdout.strip()
    print(f"{TARGET}: {state}")
    units = c.run(
        "systemctl list-units --all --plain --no-legend 'catalogue-*'", warn=True, hide=True
    ).stdout
    for line in units.splitlines():
        unit, _load, active, sub = line.split()[:4]
        print(f"{unit}: {active} ({sub})")
