"""Time site.yml against the install floor, on fresh hosts of one image, in one run.

    python -m stackkit.bench.converge [--strategies linear,free,mitogen_linear]
                                   [--json build/bench/converge.json]

For each strategy (Ansible's linear and free, and the kit's default mitogen_linear), a fresh
single host (every tier on it) gets a cold `site.yml`, then a no-op `site.yml` (the default run:
it reads the host's state and finds it as recorded), then a no-op `site.yml -e
stack_converge_all=true` (every role's every task, what a run costs without the fast path), then
every kind of the drift suite (stackkit/drift.py) made at once and the default `site.yml` that
repairs it (drift-repair). Once, on another fresh host of the same image, the floor script does
by hand what the roles install: the same apt sources, one apt transaction of the same
distribution packages (those the converge marked manually installed), the same archives unpacked
(Elasticsearch's zip, SecantusDB's and the app's wheelhouses into virtualenvs) and Elasticsearch
started until it answers. Prints each time, the ratios cold/floor and no-op/cold, task results
and changed counts, and the slowest no-op tasks (profile_tasks); writes it all as JSON for `make
bench-report`. The hosts are named stackkit-bench-*, apart from `make demo`'s."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from stackkit import (
    drift,  # the drift suite's kinds
    stackhosts,  # the harness that starts the local hosts
)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "stackkit-bench"
HOST = "bench1"
GROUPS = ("web", "app", "worker", "db", "cache", "broker", "search", "docs")
WORK = ROOT / ".cache" / "bench"  # inventory_dir/../.. is the checkout, as for inventories/local
ROLES = {p.name for p in (ROOT / "roles").iterdir() if p.is_dir()}
PROFILE_LINE = re.compile(r"^(.+?) -{2,} (\d+\.\d+)s$")

# What the floor does on a fresh host, as root. The apt configuration and the package names
# come from the host the cold converge left behind.
FLOOR_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
tar -C /etc/apt -x -f /tmp/floor/apt.tar
apt-get update -qq
apt-get install -y -qq --no-install-recommends $(cat /tmp/floor/packages) >/dev/null
mkdir -p /opt/floor
unzip -q -o /tmp/floor/elasticsearch.zip -d /opt/floor
python3 -m venv /opt/floor/secantusdb
/opt/floor/secantusdb/bin/pip install -q --no-index --find-links /tmp/floor/secantusdb secantusdb
python3 -m venv /opt/floor/app
/opt/floor/app/bin/pip install -q --no-index --find-links /tmp/floor/wheelhouse \
  /tmp/floor/wheelhouse/*.whl
id -u floor-es >/dev/null 2>&1 || useradd --system floor-es
chown -R floor-es /opt/floor/elasticsearch-*
ES_JAVA_OPTS="-Xms512m -Xmx512m" setsid runuser -u floor-es -- \
  /opt/floor/elasticsearch-5.6.16/bin/elasticsearch -d -Etransport.host=127.0.0.1
for _ in $(seq 600); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9200/")' \
    2>/dev/null && exit 0
  sleep 0.2
done
echo "elasticsearch did not answer" >&2
exit 1
"""


def strategies() -> tuple[dict[str, dict[str, str]], str]:
    """The strategies to time: Ansible's own linear and free, and the kit's default,
    stackkit.kit.mitogen_linear (pyproject.toml pins the mitogen it needs)."""
    found = {
        "linear": {"ANSIBLE_STRATEGY": "linear"},
        "free": {"ANSIBLE_STRATEGY": "free"},
        "mitogen_linear": {"ANSIBLE_STRATEGY": "stackkit.kit.mitogen_linear"},
    }
    return found, ""


def ssh(address: str, command: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *stackhosts.ssh_options(), f"{stackhosts.DEPLOY_USER}@{address}", command],
        check=False,
        capture_output=True,
        **kw,
    )


def fresh_host(suite: str) -> str:
    """A new host named stackkit-bench-bench1 (the old one removed), its inventory and an
    empty fact cache; returns its address."""
    address = stackhosts.start_hosts(PREFIX, (stackhosts.Host(HOST, GROUPS),), suite)[HOST]
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "hosts.yml").write_text(inventory(address))
    link = WORK / "group_vars"
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "inventories", "local", "group_vars"))
    shutil.rmtree(WORK / "facts", ignore_errors=True)
    return address


def inventory(address: str) -> str:
    """inventories/local's connection settings (stackhosts.render_inventory), for one host."""
    children = "".join(f"    {g}:\n      hosts:\n        {HOST}:\n" for g in GROUPS)
    return (
        "---\nall:\n  vars:\n"
        f"    ansible_user: {stackhosts.DEPLOY_USER}\n"
        f"    ansible_ssh_private_key_file: {stackhosts.SSH_KEY}\n"
        "    ansible_host_key_checking: false\n"
        "    ansible_ssh_common_args: >-\n"
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR\n"
        f"  hosts:\n    {HOST}:\n      ansible_host: {address}\n  children:\n{children}"
    )


def profile(stdout: str) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Seconds per role (profile_roles) and per task (profile_tasks) from a run's output."""
    roles: dict[str, float] = {}
    tasks: list[tuple[str, float]] = []
    for line in stdout.splitlines():
        found = PROFILE_LINE.match(line.strip())
        if not found:
            continue
        name, seconds = found[1].strip(), float(found[2])
        if name in ROLES or name == "total":
            roles[name] = seconds
        else:
            tasks.append((name, seconds))
    return roles, tasks


def converge(strategy_env: dict[str, str], log: Path, *options: str) -> dict:
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_VAULT_PASSWORD_FILE": str(ROOT / "tests/hosts/local-vault-password"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(WORK / "facts"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,ansible.posix.profile_roles",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25",
        **strategy_env,
    }
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(WORK / "hosts.yml"),
            "playbooks/site.yml",
            *options,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    log.write_text(proc.stdout + proc.stderr)
    recap = re.findall(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout)
    roles, tasks = profile(proc.stdout)
    return {
        "seconds": round(seconds, 1),
        "ok": sum(int(r[0]) for r in recap),
        "changed": sum(int(r[1]) for r in recap),
        "failed": proc.returncode != 0,
        "roles": roles,
        "slowest": tasks[:25],
        "log": str(log.relative_to(ROOT)),
    }


def make_drift(address: str) -> None:
    """Every kind of the drift suite at once, on the one bench host (it is in every group)."""
    script = "set -e\n" + "".join(f"( {d.apply} )\n" for d in drift.DRIFTS)
    ssh(address, "sudo bash -s", input=script.encode()).check_returncode()


def packages_added(address: str, before: set[str]) -> list[str]:
    after = set(ssh(address, "apt-mark showmanual", text=True).stdout.split())
    return sorted(after - before)


def floor(suite: str, apt_tar: bytes, packages: list[str]) -> float:
    releases = ROOT / ".cache" / "releases"
    wheelhouses = sorted(releases.glob("wheelhouse-*"), key=lambda p: p.stat().st_mtime)
    artifacts = ROOT / ".cache" / "artifacts"
    address = fresh_host(suite)
    staging = WORK / "floor"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / "apt.tar").write_bytes(apt_tar)
    (staging / "packages").write_text(" ".join([*packages, "unzip", "python3-venv"]) + "\n")
    shutil.copy(artifacts / "elasticsearch-5.6.16.zip", staging / "elasticsearch.zip")
    shutil.copytree(next(artifacts.glob("secantusdb-*-wheels")), staging / "secantusdb")
    (staging / "wheelhouse").mkdir()
    subprocess.run(
        ["tar", "-C", str(staging / "wheelhouse"), "-xf", str(wheelhouses[-1])], check=True
    )
    # Copying the files in is not part of the floor (the converge copies from the controller
    # too, but a provider's image could carry them); the script is.
    tar = subprocess.run(["tar", "-C", str(staging), "-c", "."], capture_output=True, check=True)
    ssh(address, "mkdir -p /tmp/floor && tar -C /tmp/floor -x", input=tar.stdout).check_returncode()
    started = time.monotonic()
    done = ssh(address, "sudo sh -s", input=FLOOR_SCRIPT.encode())
    seconds = time.monotonic() - started
    if done.returncode:
        sys.exit(f"the floor script failed:\n{done.stderr.decode()[-3000:]}")
    return round(seconds, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", help="comma-separated subset of those available")
    parser.add_argument("--suite", choices=stackhosts.SUITES, default=stackhosts.DEFAULT_SUITE)
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "converge.json")
    parser.add_argument("--keep", action="store_true", help="leave the last bench host running")
    args = parser.parse_args(argv)
    available, missing = strategies()
    chosen = args.strategies.split(",") if args.strategies else list(available)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        sys.exit(f"not available: {', '.join(unknown)} {missing}")
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.machine()}",
        "suite": args.suite,
        "strategies": {},
        "mitogen": missing or "available",
    }
    apt_tar, packages = b"", []
    try:
        for name in chosen:
            address = fresh_host(args.suite)
            before = set(ssh(address, "apt-mark showmanual", text=True).stdout.split())
            cold = converge(available[name], WORK / f"{name}-cold.log")
            noop = converge(available[name], WORK / f"{name}-noop.log")
            full = converge(
                available[name], WORK / f"{name}-full.log", "-e", "stack_converge_all=true"
            )
            make_drift(address)
            repair = converge(available[name], WORK / f"{name}-drift.log")
            results["strategies"][name] = {
                "cold": cold, "noop": noop, "full": full, "drift": repair,
            }  # fmt: skip
            print(
                f"{name}: cold {cold['seconds']} s, no-op {noop['seconds']} s,"
                f" every role {full['seconds']} s, drift-repair {repair['seconds']} s",
                flush=True,
            )
            if not packages and not cold["failed"]:
                packages = packages_added(address, before)
                apt_tar = ssh(
                    address,
                    "tar -C /etc/apt -c sources.list.d preferences.d "
                    "keyrings trusted.gpg.d 2>/dev/null",
                ).stdout
        if packages:
            results["floor"] = {
                "seconds": floor(args.suite, apt_tar, packages),
                "packages": packages,
            }
    finally:
        if not args.keep:
            stackhosts.stop_hosts(PREFIX)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return (
        0
        if all(
            not r["cold"]["failed"]
            and not r["noop"]["failed"]
            and not r["drift"]["failed"]
            and not r["full"]["failed"]
            and r["noop"]["changed"] == 0
            and r["full"]["changed"] == 0
            for r in results["strategies"].values()
        )
        else 1
    )


def print_table(results: dict) -> None:
    floor_s = results.get("floor", {}).get("seconds")
    print(f"\n{results['date']} on {results['machine']}, one {results['suite']} host")
    if floor_s:
        packages = results["floor"]["packages"]
        print(
            f"floor (one apt transaction of {len(packages)} packages, archives, ES up):"
            f" {floor_s:.1f} s"
        )
    print(
        f"{'strategy':<16}{'cold s':>8}{'cold/floor':>11}{'changed':>9}"
        f"{'no-op s':>9}{'no-op/cold':>11}{'tasks':>7}{'changed':>9}"
        f"{'all s':>8}{'changed':>9}{'drift s':>9}{'changed':>9}"
    )
    for name, r in results["strategies"].items():
        cold, noop = r["cold"], r["noop"]
        ratio = f"{cold['seconds'] / floor_s:.2f}" if floor_s else "-"
        print(
            f"{name:<16}{cold['seconds']:>8.1f}{ratio:>11}{cold['changed']:>9}"
            f"{noop['seconds']:>9.1f}{noop['seconds'] / cold['seconds']:>11.3f}"
            f"{noop['ok']:>7}{noop['changed']:>9}"
            + (
                f"{r['full']['seconds']:>8.1f}{r['full']['changed']:>9}"
                if "full" in r  # figures written before the every-role run was timed
                else f"{'-':>8}{'-':>9}"
            )
            + (
                f"{r['drift']['seconds']:>9.1f}{r['drift']['changed']:>9}"
                if "drift" in r  # figures written before the drift-repair run was timed
                else f"{'-':>9}{'-':>9}"
            )
            + (
                "  FAILED (see " + failed[0]["log"] + ")"
                if (
                    failed := [
                        x for x in (cold, noop, r.get("full"), r.get("drift")) if x and x["failed"]
                    ]
                )
                else ""
            )
        )
    if results["mitogen"] != "available":
        print(f"mitogen: {results['mitogen']}")
    first = next(iter(results["strategies"].values()), None)
    if first:
        print("slowest tasks of the first no-op run (profile_tasks):")
        for task, seconds in first["noop"]["slowest"][:10]:
            print(f"  {seconds:6.2f} s  {task}")
        print("per role, cold / no-op (profile_roles):")
        for role, seconds in first["cold"]["roles"].items():
            print(f"  {role:<16}{seconds:>8.1f}{first['noop']['roles'].get(role, 0):>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
