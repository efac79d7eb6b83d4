#!/usr/bin/python3
"""catalogue-release: the one release protocol of the catalogue on a host.

Installed by the app role as /usr/local/bin/catalogue-release and run as root, by the role
(playbooks/deploy.yml) and by `fab deploy` alike. Every subcommand is idempotent and safe to run
again after an interruption; a failure exits non-zero and names the step that failed.

    install ARCHIVE [WHEELHOUSE]  unpack a release built by build_release.py, make its virtualenv
                                  from the wheelhouse, collect static files, compile, import it
    migrate ID [--check]          apply the release's migrations (the schema owner's password on
                                  standard input when one is configured), then rebuild the search
                                  index only when the release's mapping differs from the live one;
                                  --check: exit 0 when no migration is pending, 1 when one is
    activate ID [--restart]       readiness of the release against the real services, switch
                                  `current` to it, restart the app, wait until it answers; when it
                                  does not, switch back and restart the previous release
    restart                       restart the live release (a changed environment) and wait
                                  until it answers
    rollback                      swap `current` and `previous`, restart, wait until it answers
    prune                         keep the live, the previous and the newest releases
    status [--json]               releases, the host's Python and CPU, the state of the units
    drain ADDRESS | undrain ADDRESS   take a gunicorn out of this host's nginx upstream, or back

The host's paths and units come from /etc/catalogue/release.conf, written by the app role.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CONFIG = Path(os.environ.get("CATALOGUE_RELEASE_CONFIG", "/etc/catalogue/release.conf"))
MARKER = ".stackkit-complete"
WHEELHOUSE_NOTE = ".stackkit-wheelhouse"
RELEASE_ARCHIVE = re.compile(r"^catalogue-([0-9a-f]{12})\.tar\.gz$")
WHEELHOUSE_ARCHIVE = re.compile(r"^wheelhouse-([0-9a-f]{12})\.tar$")
RELEASE_ID = re.compile(r"^[0-9a-f]{12}$")
# Run by the release's own Python with the app's environment, before the release serves: the
# readiness view answers through Django's test client, so a release that cannot reach its
# services (or breaks the view) is refused while the live one keeps serving.
READINESS_PROBE = """\
import os, sys, time
from django.test import Client
host, client = os.environ["CATALOGUE_PROBE_HOST"], Client()
# A new process opens its first connection to every service: asked again, it answers as the
# warm processes of a live release would.
for attempt in range(5):
    response = client.get("/readyz", HTTP_HOST=host, secure=True)
    if response.status_code == 200:
        sys.exit(0)
    time.sleep(1)
sys.exit("/readyz answered %d: %s" % (response.status_code, response.content[:400].decode()))
"""


class StepFailed(Exception):
    """A step of a subcommand failed; the message says why."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"step '{step}': {detail}")
        self.step = step


@dataclass(frozen=True)
class Config:
    root: Path
    manage: str
    python: str
    target: str
    web_service: str
    health_path: str
    health_host: str
    health_timeout: float
    health_tls_name: str
    health_tls_ca: str
    health_tls_certificate: str
    health_tls_key: str
    keep_releases: int
    migrate_owner: str
    reindex: bool
    nginx_upstream_file: str

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or CONFIG
        parser = configparser.ConfigParser(interpolation=None)
        if not parser.read(path):
            raise SystemExit(f"catalogue-release: {path} is missing: run playbooks/site.yml first")
        data = parser["release"]
        return cls(
            root=Path(data["root"]),
            manage=data["manage"],
            python=data["python"],
            target=data["target"],
            web_service=data["web_service"],
            health_path=data["health_path"],
            health_host=data["health_host"],
            health_timeout=float(data["health_timeout"]),
            health_tls_name=data.get("health_tls_name", ""),
            health_tls_ca=data.get("health_tls_ca", ""),
            health_tls_certificate=data.get("health_tls_certificate", ""),
            health_tls_key=data.get("health_tls_key", ""),
            keep_releases=int(data["keep_releases"]),
            migrate_owner=data["migrate_owner"],
            reindex=data.getboolean("reindex"),
            nginx_upstream_file=data.get("nginx_upstream_file", ""),
        )

    def release(self, release_id: str) -> Path:
        if not RELEASE_ID.match(release_id):
            raise StepFailed("check", f"{release_id!r} is not a release id")
        return self.root / "releases" / release_id


# -- helpers ---------------------------------------------------------------------------------------
def run(step: str, argv: list[str], env: dict | None = None, **kw) -> str:
    """Run a command; a non-zero exit fails `step` with the end of the command's output."""
    proc = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False, **kw
    )
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise StepFailed(step, f"{' '.join(argv[:3])}... exited {proc.returncode}: {output}")
    return proc.stdout


def link_target(link: Path) -> Path | None:
    return Path(os.readlink(link)) if link.is_symlink() else None


def point(link: Path, directory: Path) -> None:
    """Replace a link by a rename: a process sees the old release or the new one, never none."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(directory)
    tmp.replace(link)


def complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def mark_complete(directory: Path, content: str) -> None:
    (directory / MARKER).write_text(content + "\n")


def unpack(archive: Path, directory: Path) -> None:
    """Unpack into a fresh root-owned directory (what an interrupted run left is removed)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o755, parents=True)
    run("unpack", ["tar", "--no-same-owner", "-xf", str(archive), "-C", str(directory)])


def manage(cfg: Config, release: Path, step: str, *args: str, **kw) -> str:
    """catalogue-manage with the release's code, as the app's user, with the app's environment."""
    env = {"CATALOGUE_RELEASE": str(release), **kw.pop("env", {})}
    return run(step, [cfg.manage, *args], env=env, **kw)


def unit_exists(unit: str) -> bool:
    proc = subprocess.run(
        ["systemctl", "show", "-p", "LoadState", "--value", unit],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() == "loaded"


def systemctl_value(unit: str, prop: str) -> str:
    return run("status", ["systemctl", "show", "-p", prop, "--value", unit]).strip()


def say(message: str) -> None:
    print(f"catalogue-release: {message}", flush=True)


def result(**fields) -> int:
    """The last line of standard output: what the drivers read (`changed` above all)."""
    print(json.dumps(fields, sort_keys=True), flush=True)
    return 0


# -- install -------------------------------------------------------------------------------------
def install(cfg: Config, archive: Path, wheelhouse_archive: Path | None) -> int:
    match = RELEASE_ARCHIVE.match(archive.name)
    if not match:
        raise StepFailed("check", f"{archive.name} is not named catalogue-<id>.tar.gz")
    release = cfg.release(match.group(1))
    venv = release / ".venv"
    if complete(venv):
        return result(changed=False, release=release.name)
    wheelhouse = _install_wheelhouse(cfg, release, wheelhouse_archive)
    unpack(archive, release)
    run("virtualenv", [cfg.python, "-m", "venv", "--clear", str(venv)])
    run(
        "requirements",
        [f"{venv}/bin/pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wheelhouse), "--only-binary=:all:", "--no-deps", "--require-hashes",
         "--requirement", str(release / "requirements.txt")],
        env={"PIP_CONFIG_FILE": os.devnull},
    )  # fmt: skip
    # Static files need no service and no secret: the base settings suffice.
    run(
        "collectstatic",
        [f"{venv}/bin/python", "manage.py", "collectstatic", "--noinput"],
        env={"DJANGO_SETTINGS_MODULE": "catalogue_site.settings.base",
             "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=release,
    )  # fmt: skip
    run("compile", [f"{venv}/bin/python", "-m", "compileall", "-q", str(release)])
    # Imports every app, model and URL with the production settings and the host's environment.
    manage(cfg, release, "import", "check")
    (release / WHEELHOUSE_NOTE).write_text(wheelhouse.name + "\n")
    mark_complete(venv, release.name)
    for path in (archive, wheelhouse_archive):
        if path is not None and path.parent == cfg.root / "archives":
            path.unlink(missing_ok=True)
    say(f"installed release {release.name}")
    return result(changed=True, release=release.name)


def _install_wheelhouse(cfg: Config, release: Path, archive: Path | None) -> Path:
    if archive is None:
        raise StepFailed("check", f"release {release.name} is not installed: give its wheelhouse")
    match = WHEELHOUSE_ARCHIVE.match(archive.name)
    if not match:
        raise StepFailed("check", f"{archive.name} is not named wheelhouse-<id>.tar")
    wheelhouse = cfg.root / "wheelhouse" / match.group(1)
    if not complete(wheelhouse):
        unpack(archive, wheelhouse)
        mark_complete(wheelhouse, match.group(1))
    return wheelhouse


# -- migrate -------------------------------------------------------------------------------------
def pending_migrations(cfg: Config, release: Path) -> bool:
    proc = subprocess.run(
        [cfg.manage, "migrate", "--check"], env={**os.environ, "CATALOGUE_RELEASE": str(release)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode not in (0, 1):
        raise StepFailed(
            "migrate", f"migrate --check exited {proc.returncode}: {proc.stderr[-2000:]}"
        )
    return proc.returncode == 1


def migrate(cfg: Config, release_id: str, check: bool) -> int:
    release = installed(cfg, release_id)
    pending = pending_migrations(cfg, release)
    if check:
        say(f"release {release_id}: {'migrations pending' if pending else 'no migration pending'}")
        return 1 if pending else 0
    changed = False
    if pending:
        env, stdin = {}, None
        if cfg.migrate_owner:
            # The schema owner's password: one line on standard input, passed on, never stored.
            stdin = sys.stdin.readline()
            if not stdin.strip():
                raise StepFailed("migrate", "migrations are pending: the schema owner's password"
                                 " must come on standard input")  # fmt: skip
            env = {"POSTGRES_OWNER_USER": cfg.migrate_owner}
        manage(cfg, release, "migrate", "migrate", "--noinput", env=env, input=stdin)
        say(f"release {release_id}: migrations applied")
        changed = True
    if cfg.reindex:
        out = manage(cfg, release, "reindex", "reindex", "--if-changed")
        changed = changed or "no reindex" not in out
        say(out.strip())
    return result(changed=changed, release=release_id)


def installed(cfg: Config, release_id: str) -> Path:
    release = cfg.release(release_id)
    if not complete(release / ".venv"):
        raise StepFailed("check", f"release {release_id} is not installed on this host")
    return release


# -- activate and rollback -----------------------------------------------------------------------
def web_address(cfg: Config) -> str | None:
    """Where gunicorn listens: its socket unit's address (None on a host without one)."""
    socket = f"{cfg.web_service}.socket"
    if not cfg.web_service or not unit_exists(socket):
        return None
    listen = systemctl_value(socket, "Listen").split()
    return listen[0] if listen else None


def restart(cfg: Config) -> None:
    """Restart every process of the app. gunicorn's socket stays open (socket activation):
    connections that arrive meanwhile wait in its backlog for the new processes. The socket is
    PartOf the target (a stopped app is not started again by a request), so a restart of the
    target would close it: the target's services are restarted instead, then the target is
    started, which starts whichever of its units were not running."""
    run("restart", ["systemctl", "daemon-reload"])
    members = systemctl_value(cfg.target, "ConsistsOf").split()
    services = sorted(unit for unit in members if not unit.endswith(".socket"))
    if services:
        run("restart", ["systemctl", "try-restart", *services])
    run("restart", ["systemctl", "start", cfg.target])


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, the certificate checked against a name the address is not: every
    web host's gunicorn carries the name nginx checks them all against."""

    def __init__(self, host: str, *, server_name: str, **kw) -> None:
        super().__init__(host, **kw)
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


def health_status(cfg: Config, address: str) -> int:
    """The status gunicorn answers the readiness view with: over HTTPS (cfg.health_tls_name set,
    as nginx checks it, showing this host's certificate) or plain HTTP."""
    if cfg.health_tls_name:
        context = ssl.create_default_context(cafile=cfg.health_tls_ca)
        context.load_cert_chain(cfg.health_tls_certificate, cfg.health_tls_key)
        conn = _NamedHTTPSConnection(
            address, server_name=cfg.health_tls_name, context=context, timeout=5
        )
    else:
        conn = http.client.HTTPConnection(address, timeout=5)
    try:
        conn.request("GET", cfg.health_path, headers={"Host": cfg.health_host})
        return conn.getresponse().status
    finally:
        conn.close()


def wait_ready(cfg: Config, address: str | None) -> None:
    """Until the target is active and, on a web host, gunicorn answers the readiness view."""
    deadline = time.monotonic() + cfg.health_timeout
    scheme = "https" if cfg.health_tls_name else "http"
    url = f"{scheme}://{address}{cfg.health_path}" if address else None
    last = "not checked yet"
    while time.monotonic() < deadline:
        if cfg.web_service and unit_exists(f"{cfg.web_service}.service"):
            state = systemctl_value(f"{cfg.web_service}.service", "SubState")
            if state in ("failed", "auto-restart"):
                raise StepFailed("start", f"{cfg.web_service} is {state}: journalctl -u "
                                 f"{cfg.web_service}")  # fmt: skip
        if systemctl_value(cfg.target, "ActiveState") == "active":
            if url is None:
                return
            try:
                status = health_status(cfg, address)
                if status == 200:
                    return
                last = f"{url} answered {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{url}: {exc}"
        time.sleep(0.5)
    raise StepFailed("health", f"not ready within {cfg.health_timeout:g} s: {last}")


def probe_readiness(cfg: Config, release: Path) -> None:
    """The release's readiness view, asked again until it answers or health_timeout runs out
    (a dependency slow for a moment is not a broken release)."""
    if not cfg.web_service:
        return
    env = {"CATALOGUE_PROBE_HOST": cfg.health_host}
    deadline = time.monotonic() + cfg.health_timeout
    while True:
        try:
            manage(cfg, release, "readiness", "shell", "-c", READINESS_PROBE, env=env)
            return
        except StepFailed:
            if time.monotonic() > deadline:
                raise
        time.sleep(2)


def switch_and_restart(cfg: Config, release: Path) -> None:
    point(cfg.root / "current", release)
    restart(cfg)
    wait_ready(cfg, web_address(cfg))


def activate(cfg: Config, release_id: str, force_restart: bool) -> int:
    release = installed(cfg, release_id)
    current, previous = cfg.root / "current", cfg.root / "previous"
    live, before = link_target(current), link_target(previous)
    if live == release and not force_restart:
        say(f"release {release_id} is already live")
        return result(changed=False, release=release_id)
    if live != release:
        probe_readiness(cfg, release)
    try:
        if live is not None and live != release:
            point(previous, live)
        switch_and_restart(cfg, release)
    except StepFailed as failure:
        if live is None or live == release:
            raise
        point(current, live)
        if before is not None:
            point(previous, before)
        restart(cfg)
        wait_ready(cfg, web_address(cfg))
        detail = f"{failure}; rolled back to {live.name}, which answers"
        raise StepFailed(failure.step, detail) from None
    say(f"release {release_id} is live")
    return result(changed=True, release=release_id)


def rollback(cfg: Config) -> int:
    current, previous = cfg.root / "current", cfg.root / "previous"
    live, before = link_target(current), link_target(previous)
    if before is None or not complete(before / ".venv"):
        raise StepFailed(
            "check", f"{previous} does not point at a release: nothing to roll back to"
        )
    if live is not None:
        point(previous, live)
    switch_and_restart(cfg, before)
    say(f"rolled back to {before.name}")
    return result(changed=True, release=before.name)


# -- prune and status ----------------------------------------------------------------------------
def prune(cfg: Config) -> int:
    """Keep keep_releases releases: the live and previous ones and the newest others; and only
    the wheelhouses those releases were installed from (a rollback needs no installation)."""
    keep = {p for p in (link_target(cfg.root / n) for n in ("current", "previous")) if p}
    releases = sorted(
        (p for p in (cfg.root / "releases").iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    others = [p for p in releases if p not in keep]
    stale = others[: max(len(others) - (cfg.keep_releases - len(keep)), 0)]
    kept = [p for p in releases if p not in stale]
    wheelhouses = {
        note.read_text().strip() for p in kept if (note := p / WHEELHOUSE_NOTE).is_file()
    }
    stale += [
        p for p in (cfg.root / "wheelhouse").iterdir() if p.is_dir() and p.name not in wheelhouses
    ]
    for path in stale:
        shutil.rmtree(path)
        say(f"removed {path}")
    return result(changed=bool(stale), removed=[str(p) for p in stale])


def status(cfg: Config, as_json: bool) -> int:
    links = {n: link_target(cfg.root / n) for n in ("current", "previous")}
    releases = (cfg.root / "releases").iterdir() if (cfg.root / "releases").is_dir() else ()
    python = run("status", [cfg.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    units = [cfg.target] + [u for u in (f"{cfg.web_service}.socket",) if unit_exists(u)]
    units += run(
        "status", ["systemctl", "list-dependencies", "--plain", "--no-pager", cfg.target]
    ).split()[1:]
    facts = {
        "current": links["current"].name if links["current"] else None,
        "previous": links["previous"].name if links["previous"] else None,
        "releases": sorted(p.name for p in releases if complete(p / ".venv")),
        "archives": str(cfg.root / "archives"),
        "python": python.strip(),
        "arch": platform.machine(),
        "migrate_owner": bool(cfg.migrate_owner),
        "units": {u: systemctl_value(u, "ActiveState") for u in dict.fromkeys(units)},
    }
    if as_json:
        return result(**facts)
    for name in ("current", "previous"):
        print(f"{name}: {facts[name] or 'none'}")
    print(f"installed: {' '.join(facts['releases']) or 'none'}")
    for unit, state in facts["units"].items():
        print(f"{unit}: {state}")
    return 0


# -- nginx upstream ------------------------------------------------------------------------------
def set_drained(cfg: Config, address: str, drained: bool) -> int:
    """Mark one upstream server `down` in this host's nginx (or back), then reload nginx
    gracefully: requests in flight finish, new ones go to the other servers."""
    path = Path(cfg.nginx_upstream_file)
    if not cfg.nginx_upstream_file or not path.is_file():
        return result(changed=False)
    lines = path.read_text().splitlines(keepends=True)
    pattern = re.compile(rf"^(\s*server\s+{re.escape(address)})(\s+down)?(\s.*)$")
    changed = []
    for line in lines:
        match = pattern.match(line.rstrip("\n"))
        if match and bool(match.group(2)) != drained:
            changed.append(f"{match.group(1)}{' down' if drained else ''}{match.group(3)}\n")
        else:
            changed.append(line)
    if changed == lines:
        return result(changed=False)
    if (
        drained
        and sum(1 for x in changed if re.match(r"^\s*server\s", x) and " down" not in x) == 0
    ):
        raise StepFailed("drain", f"{address} is the last server of {path} still up")
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
        tmp.write("".join(changed))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)
    run("drain", ["nginx", "-t", "-q"])
    run("drain", ["systemctl", "reload", "nginx"])
    say(f"{address} {'drained from' if drained else 'back in'} nginx's upstream")
    return result(changed=True)


# -- command line --------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catalogue-release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install a release from its archives")
    p.add_argument("archive", type=Path)
    p.add_argument("wheelhouse", type=Path, nargs="?")
    p = sub.add_parser("migrate", help="migrations, then a reindex when the mapping changed")
    p.add_argument("release")
    p.add_argument("--check", action="store_true", help="only say whether any is pending")
    p = sub.add_parser("activate", help="make a release live, or roll back to the live one")
    p.add_argument("release")
    p.add_argument("--restart", action="store_true", help="restart even when already live")
    sub.add_parser("restart", help="restart the live release and wait until it answers")
    sub.add_parser("rollback", help="back to the previous release")
    sub.add_parser("prune", help="remove old releases and wheelhouses")
    p = sub.add_parser("status", help="releases and units")
    p.add_argument("--json", action="store_true")
    for name in ("drain", "undrain"):
        p = sub.add_parser(name, help=f"{name} a gunicorn address in this host's nginx")
        p.add_argument("address")
    return parser.parse_args(argv)


def restart_live(cfg: Config) -> int:
    restart(cfg)
    wait_ready(cfg, web_address(cfg))
    return result(changed=True)


COMMANDS = {
    "install": lambda cfg, a: install(
        cfg, a.archive.resolve(), a.wheelhouse and a.wheelhouse.resolve()
    ),
    "migrate": lambda cfg, a: migrate(cfg, a.release, a.check),
    "activate": lambda cfg, a: activate(cfg, a.release, a.restart),
    "rollback": lambda cfg, a: rollback(cfg),
    "restart": lambda cfg, a: restart_live(cfg),
    "prune": lambda cfg, a: prune(cfg),
    "status": lambda cfg, a: status(cfg, a.json),
    "drain": lambda cfg, a: set_drained(cfg, a.address, True),
    "undrain": lambda cfg, a: set_drained(cfg, a.address, False),
}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cfg = Config.load()
    os.umask(0o022)
    # One release operation at a time on a host, whichever driver started it.
    with open(cfg.root / ".release.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return COMMANDS[args.command](cfg, args)
        except StepFailed as failure:
            print(f"catalogue-release: {args.command} failed at {failure}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
