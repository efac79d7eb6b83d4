"""Local test hosts: Debian containers with systemd as PID 1, reached over real SSH.

No container registry is needed: base images are built from the Debian mirror that this
machine's own apt sources use (debootstrap + ``docker import``) and cached under a tag that
carries a hash of their recipe.

    python -m stackkit.stackhosts COMMAND (console script: stackhosts COMMAND)

    engine                      start the Docker engine if it is not running
    image [--suite trixie]      build the base image unless it is cached
    up [--topology single]      start a topology (or reuse its running hosts, data and all),
                                write inventories/local/hosts.yml
    down [--topology single]    remove its containers and network: the one way to start over
    create --prefix P H:G ...   start hosts for a molecule scenario, print JSON
    destroy --prefix P          remove a molecule scenario's hosts
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
SSH_KEY = CACHE / "ssh" / "id_ed25519"
# The local hosts' test CA: the nginx role has each web host's certificate signed by it, and the
# suites verify the sites against it (inventories/local/group_vars/web).
TEST_CA = CACHE / "tls" / "ca.pem"
TEST_CA_KEY = CACHE / "tls" / "ca.key"
LOCAL_INVENTORY = ROOT / "inventories" / "local" / "hosts.yml"

SUITES = ("trixie", "bookworm")
DEFAULT_SUITE = "trixie"
# What a minimal cloud image of Debian or Ubuntu ships with: enough for systemd, sshd,
# sudo and Ansible's apt module. Everything else is the roles' business.
IMAGE_PACKAGES = (
    "systemd,systemd-sysv,dbus,libkmod2,python3,python3-apt,sudo,iproute2,procps,"
    "ca-certificates,openssh-server"
)
IMAGE_REPO = "stackkit/debian"
LABEL = "io.stackkit.managed"
DEPLOY_USER = "deploy"

# systemd as PID 1 without --privileged: this machine withholds CAP_SYS_RESOURCE, so every
# other capability is granted and the cgroup tree is shared with the host.
RUN_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--stop-signal", "SIGRTMIN+3",
)  # fmt: skip


@dataclass(frozen=True)
class Host:
    name: str
    groups: tuple[str, ...]
    publish: tuple[str, ...] = field(default_factory=tuple)
    suite: str | None = None  # None: the suite asked for on the command line


# Inventory groups the playbooks know. `app` hosts run the Django code (web and workers);
# `monitor` hosts run Prometheus and Alertmanager (on the multi topology, beside Redis).
WEB_PORT = "127.0.0.1:8080:80"
WEB_TLS_PORT = "127.0.0.1:8443:443"
TOPOLOGIES: dict[str, tuple[Host, ...]] = {
    "single": (
        Host(
            "stack1",
            ("web", "app", "worker", "db", "cache", "broker", "search", "docs", "monitor"),
            (WEB_PORT, WEB_TLS_PORT),
        ),
    ),
    "multi": (
        Host("web1", ("web", "app"), (WEB_PORT, WEB_TLS_PORT)),
        Host("web2", ("web", "app")),
        Host("worker1", ("worker", "app")),
        Host("worker2", ("worker", "app")),
        Host("db1", ("db",)),
        Host("cache1", ("cache", "monitor")),
        Host("broker1", ("broker",)),
        Host("search1", ("search",)),
        Host("docs1", ("docs",)),
    ),
}


def log(msg: str) -> None:
    print(f"stackhosts: {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, capture: bool = True, **kw) -> str:
    proc = subprocess.run(cmd, check=False, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
        raise SystemExit(f"stackhosts: {' '.join(cmd)} failed ({proc.returncode}): {detail}")
    return (proc.stdout or "").strip() if capture else ""


# --- the machine's own Debian mirror -------------------------------------------------------


def parse_apt_sources(texts: list[str]) -> dict[str, str]:
    """Return {"main": URI, "security": URI} from deb822 or one-line apt sources."""
    found: dict[str, str] = {}
    for text in texts:
        # deb822 stanzas
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (
                    line.partition(":")
                    for line in stanza.splitlines()
                    if ":" in line and not line.lstrip().startswith("#")
                )
            )
            if "uris" in fields and "suites" in fields:
                uri = fields["uris"].split()[0]
                kind = "security" if "-security" in fields["suites"] else "main"
                found.setdefault(kind, uri)
        # one-line format
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                rest = [p for p in rest if not p.endswith("]")]
                uri, suite = rest[0], rest[1]
                kind = "security" if "security" in suite else "main"
                found.setdefault(kind, uri)
    if "main" not in found:
        raise SystemExit("stackhosts: no Debian mirror found in this machine's apt sources")
    if "security" not in found:
        found["security"] = found["main"].rstrip("/").removesuffix("/debian") + "/debian-security"
    return {k: v.rstrip("/") for k, v in found.items()}


def machine_mirrors() -> dict[str, str]:
    paths = sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + sorted(
        glob.glob("/etc/apt/sources.list.d/*.list")
    )
    if os.path.exists("/etc/apt/sources.list"):
        paths.append("/etc/apt/sources.list")
    return parse_apt_sources([Path(p).read_text() for p in paths])


def image_sources(suite: str, mirrors: dict[str, str]) -> str:
    return (
        "Types: deb\n"
        f"URIs: {mirrors['main']}\n"
        f"Suites: {suite} {suite}-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        f"URIs: {mirrors['security']}\n"
        f"Suites: {suite}-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def image_tag(suite: str, mirrors: dict[str, str]) -> str:
    recipe = json.dumps(
        {
            "suite": suite,
            "packages": IMAGE_PACKAGES,
            "sources": image_sources(suite, mirrors),
            "finish": FINISH_SCRIPT,
        },
        sort_keys=True,
    )
    return f"{IMAGE_REPO}:{suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


# Run inside the new root filesystem before it becomes an image.
FINISH_SCRIPT = """
set -e
apt-get clean
rm -f /var/log/*.log
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
echo 'APT::Install-Recommends "false";' > /etc/apt/apt.conf.d/90stackkit-norecommends
"""


# --- engine and images ---------------------------------------------------------------------


def succeeds(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def engine_running() -> bool:
    return succeeds("docker", "info")


def ensure_engine() -> None:
    if engine_running():
        return
    if Path("/run/systemd/system").is_dir():
        log("starting docker.service")
        run("systemctl", "start", "docker")
        return
    if not shutil.which("dockerd"):
        raise SystemExit("stackhosts: dockerd not found; run `make bootstrap` first")
    log("starting the Docker engine")
    with open("/var/log/dockerd.log", "ab") as out:
        subprocess.Popen(
            ["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    for _ in range(60):
        if engine_running():
            return
        time.sleep(1)
    raise SystemExit("stackhosts: the Docker engine did not start; see /var/log/dockerd.log")


def image_exists(tag: str) -> bool:
    return succeeds("docker", "image", "inspect", tag)


def ensure_image(suite: str = DEFAULT_SUITE) -> str:
    mirrors = machine_mirrors()
    tag = image_tag(suite, mirrors)
    if image_exists(tag):
        return tag
    log(f"building {tag} from {mirrors['main']}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"stackkit-{suite}-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            "debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}",
            suite, str(rootfs), mirrors["main"],
        )  # fmt: skip
        sources = rootfs / "etc/apt/sources.list.d/debian.sources"
        sources.write_text(image_sources(suite, mirrors))
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        run("chroot", str(rootfs), "sh", "-c", FINISH_SCRIPT)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            "docker", "import",
            "-c", 'CMD ["/lib/systemd/systemd"]', "-c", "ENV container=docker",
            "-", tag, stdin=tar.stdout,
        )  # fmt: skip
        tar.wait()
    log(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


# --- hosts ---------------------------------------------------------------------------------


def ensure_ssh_key() -> str:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stackkit", "-f", str(SSH_KEY))
    return SSH_KEY.with_suffix(".pub").read_text().strip()


def ensure_test_ca(directory: Path = TEST_CA.parent) -> Path:
    """A CA for the local hosts' certificates, made once: the same kind `make secrets` makes for
    an inventory's internal CA (EC P-256, ten years, valid from make_vault.BACKDATE before it is
    made). Another checkout's hosts may use the one in .cache/tls: it is never replaced."""
    certificate_path, key_path = directory / TEST_CA.name, directory / TEST_CA_KEY.name
    if certificate_path.exists() and key_path.exists():
        return certificate_path
    from stackkit.make_vault import internal_ca  # noqa: PLC0415 - only this command needs it

    certificate, key = internal_ca("stackkit local test CA")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_text(key)
    certificate_path.write_text(certificate)
    log(f"made the local hosts' test CA: {certificate_path}")
    return certificate_path


# What a cloud provider's first boot does: host keys, a sudo-capable login with our key.
BOOTSTRAP_SCRIPT = """
set -e
until systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded'; do sleep 0.2; done
ssh-keygen -A >/dev/null
id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {user}
install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh
echo '{key}' > /home/{user}/.ssh/authorized_keys
chown {user}:{user} /home/{user}/.ssh/authorized_keys
chmod 0600 /home/{user}/.ssh/authorized_keys
echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-{user}-bootstrap
chmod 0440 /etc/sudoers.d/90-{user}-bootstrap
# sshd gave up at boot for want of host keys; start it afresh now that it has them.
systemctl reset-failed ssh.service
systemctl restart ssh.service
"""


def container_ip(container: str, network: str) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return run("docker", "inspect", "-f", fmt, container)


def remove_containers(label_value: str) -> None:
    ids = run("docker", "ps", "-aq", "--filter", f"label={LABEL}={label_value}").split()
    if ids:
        run("docker", "rm", "-f", *ids)


def start_hosts(prefix: str, hosts: tuple[Host, ...], suite: str) -> dict[str, str]:
    """Start (or restart cleanly) hosts named PREFIX-NAME on network PREFIX; return IPs."""
    ensure_engine()
    tags = {s: ensure_image(s) for s in {h.suite or suite for h in hosts}}
    key = ensure_ssh_key()
    ensure_test_ca()
    remove_containers(prefix)
    if not succeeds("docker", "network", "inspect", prefix):
        run("docker", "network", "create", "--label", f"{LABEL}={prefix}", prefix)
    for host in hosts:
        publish = [arg for p in host.publish for arg in ("-p", p)]
        run(
            "docker", "run", "-d", "--name", f"{prefix}-{host.name}", "--hostname", host.name,
            "--network", prefix, "--network-alias", host.name,
            "--label", f"{LABEL}={prefix}", *RUN_FLAGS, *publish, tags[host.suite or suite],
        )  # fmt: skip
    script = BOOTSTRAP_SCRIPT.format(user=DEPLOY_USER, key=key)
    procs = [
        subprocess.Popen(
            ["docker", "exec", f"{prefix}-{h.name}", "timeout", "120", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for h in hosts
    ]
    for host, proc in zip(hosts, procs, strict=True):
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"stackhosts: bootstrapping {host.name} failed: {out}")
    addresses = {h.name: container_ip(f"{prefix}-{h.name}", prefix) for h in hosts}
    for name, address in addresses.items():
        wait_for_ssh(name, address)
    return addresses


def running_hosts(prefix: str, hosts: tuple[Host, ...], suite: str) -> dict[str, str] | None:
    """The addresses of hosts PREFIX-NAME when every one of them runs the image it would be
    started from and answers over SSH; None when any is missing, stopped or stale."""
    if not engine_running() or not SSH_KEY.exists():
        return None
    mirrors = machine_mirrors()
    addresses = {}
    for host in hosts:
        name = f"{prefix}-{host.name}"
        fmt = "{{.State.Running}} {{.Config.Image}}"
        found = subprocess.run(
            ["docker", "inspect", "-f", fmt, name], capture_output=True, text=True, check=False
        ).stdout.split()
        if found != ["true", image_tag(host.suite or suite, mirrors)]:
            return None
        addresses[host.name] = container_ip(name, prefix)
        if not succeeds("ssh", *ssh_options(), f"{DEPLOY_USER}@{addresses[host.name]}", "true"):
            return None
    return addresses


def wait_for_ssh(name: str, address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    cmd = ["ssh", *ssh_options(), f"{DEPLOY_USER}@{address}", "true"]
    while time.monotonic() < deadline:
        if succeeds(*cmd):
            return
        time.sleep(0.5)
    raise SystemExit(f"stackhosts: {name} ({address}) did not answer over SSH")


def ssh_options() -> list[str]:
    # Throwaway hosts get fresh host keys on every start; pinning them would only get in the way.
    return [
        "-i", str(SSH_KEY), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
    ]  # fmt: skip


def stop_hosts(prefix: str) -> None:
    if not engine_running():
        return
    remove_containers(prefix)
    if succeeds("docker", "network", "inspect", prefix):
        run("docker", "network", "rm", prefix)


def render_inventory(topology: str, addresses: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for host in TOPOLOGIES[topology]:
        for group in host.groups:
            groups.setdefault(group, []).append(host.name)
    lines = [
        f"# Written by stackkit/stackhosts.py for the `{topology}` topology; do not edit.",
        "---",
        "all:",
        "  vars:",
        f"    ansible_user: {DEPLOY_USER}",
        # A plain path: testinfra's ansible backend does not template inventory values.
        f"    ansible_ssh_private_key_file: {SSH_KEY}",
        "    ansible_host_key_checking: false",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "  hosts:",
    ]
    lines += [f"    {name}:\n      ansible_host: {addresses[name]}" for name in addresses]
    lines.append("  children:")
    for group in sorted(groups):
        lines += [f"    {group}:", "      hosts:"]
        lines += [f"        {name}:" for name in groups[group]]
    return "\n".join(lines) + "\n"


def forget_facts(names) -> None:
    """New hosts under old names: facts cached for the old ones would mislead Ansible."""
    for name in names:
        (CACHE / "facts" / name).unlink(missing_ok=True)


def parse_host_specs(specs: list[str]) -> tuple[Host, ...]:
    """NAME[:GROUP,GROUP[:SUITE]] -> Host."""
    hosts = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        groups, _, suite = rest.partition(":")
        hosts.append(Host(name, tuple(g for g in groups.split(",") if g), suite=suite or None))
    return tuple(hosts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine")
    image = sub.add_parser("image")
    image.add_argument("--suite", choices=SUITES, default=DEFAULT_SUITE)
    for name in ("up", "down"):
        p = sub.add_parser(name)
        p.add_argument("--topology", choices=sorted(TOPOLOGIES), default="single")
        p.add_argument("--suite", choices=SUITES, default=DEFAULT_SUITE)
    create = sub.add_parser("create")
    create.add_argument("--prefix", required=True)
    create.add_argument("--suite", choices=SUITES, default=DEFAULT_SUITE)
    create.add_argument("hosts", nargs="+", metavar="NAME:GROUP,GROUP")
    destroy = sub.add_parser("destroy")
    destroy.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)

    if args.command == "engine":
        ensure_engine()
    elif args.command == "image":
        ensure_engine()
        print(ensure_image(args.suite))
    elif args.command == "up":
        started = time.monotonic()
        for other in TOPOLOGIES:
            if other != args.topology:
                stop_hosts(f"stackkit-{other}")
        prefix, hosts = f"stackkit-{args.topology}", TOPOLOGIES[args.topology]
        addresses = running_hosts(prefix, hosts, args.suite)
        if addresses is not None:
            log(
                f"reusing the running {args.topology} hosts and their data (hosts-down: start over)"
            )
        else:
            addresses = start_hosts(prefix, hosts, args.suite)
            forget_facts(addresses)
        LOCAL_INVENTORY.write_text(render_inventory(args.topology, addresses))
        log(f"{len(addresses)} hosts up in {time.monotonic() - started:.0f} s: {LOCAL_INVENTORY}")
    elif args.command == "down":
        stop_hosts(f"stackkit-{args.topology}")
        forget_facts(h.name for h in TOPOLOGIES[args.topology])
        LOCAL_INVENTORY.unlink(missing_ok=True)
    elif args.command == "create":
        hosts = parse_host_specs(args.hosts)
        addresses = start_hosts(args.prefix, hosts, args.suite)
        print(json.dumps({"ssh_key": str(SSH_KEY), "user": DEPLOY_USER, "hosts": addresses}))
    elif args.command == "destroy":
        stop_hosts(args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
