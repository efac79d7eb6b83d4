"""Drift suite: what is changed on a host behind Ansible's back, the default run puts back.

Each kind of drift is a shell command run as root on the first host of a group, a probe that
shows the state it changes, and the task that must report it. The suite applies every kind
chosen at once (after a default run that leaves every host converged and recorded), then:

  1. `site.yml --check --diff` must report each kind through its task, and change nothing
     (every probe still shows the drift afterwards);
  2. the default `site.yml` must repair each kind (every probe reads as before the drift);
  3. the next default `site.yml` must report changed=0 on every host.

Destructive: it breaks the hosts' configuration on purpose. It refuses any inventory whose
hosts do not all set stackkit_disposable: true, as tests/infra does.

    python -m stackkit.drift --inventory inventories/local            every kind (make drift)
    python -m stackkit.drift --inventory INV --kinds sshd-option,...  some kinds
    python -m stackkit.drift --list                                   the kinds, one a line
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stackkit.inventory import DISPOSABLE, PlayVars

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Superuser psql as every superuser session of the kit runs it (tests/infra/conftest.py says why).
PSQL = (
    "runuser -u postgres -- env PGOPTIONS='-c search_path=pg_catalog,pg_temp' "
    "psql -X -At -d catalogue -c"
)
ES = "curl -s http://127.0.0.1:9200"


@dataclass(frozen=True)
class Drift:
    kind: str
    group: str  # the drift is made on the first host of this inventory group
    apply: str  # shell, as root
    probe: str  # shell, as root: its output shows the drift and must come back after the repair
    task: str  # a task that reports it in --check ("role : name" as Ansible prints it)
    # In the short round (tests/infra/test_drift.py), which runs site.yml for QUICK_TAGS only.
    quick: bool = False


DRIFTS = (
    Drift(
        "nginx-config", "web",
        "sed -i 's/server_tokens off;/server_tokens on;/' /etc/nginx/nginx.conf"
        " && systemctl reload nginx",
        "grep -c 'server_tokens on' /etc/nginx/nginx.conf",
        "nginx : Write nginx.conf",
    ),
    Drift(
        "redis-config", "cache",
        "sed -i 's/^maxmemory .*/maxmemory 1mb/' /etc/redis/redis.conf",
        "grep '^maxmemory ' /etc/redis/redis.conf",
        "redis : Configure Redis", quick=True,
    ),
    Drift(
        "postgresql-config", "db",
        "echo 'log_statement = all' | tee -a /etc/postgresql/*/main/conf.d/50-stackkit.conf",
        "grep -c log_statement /etc/postgresql/*/main/conf.d/50-stackkit.conf",
        "postgresql : Write the server settings",
    ),
    Drift(
        "rabbitmq-config", "broker",
        "echo 'log.console.level = debug' >> /etc/rabbitmq/rabbitmq.conf",
        "grep -c 'log.console.level' /etc/rabbitmq/rabbitmq.conf",
        "rabbitmq : Configure RabbitMQ",
    ),
    Drift(
        "elasticsearch-config", "search",
        "echo 'action.destructive_requires_name: false' >> /etc/elasticsearch/elasticsearch.yml",
        "grep -c destructive_requires_name /etc/elasticsearch/elasticsearch.yml",
        "elasticsearch : Configure Elasticsearch and its JVM",
    ),
    Drift(
        "mongodb-config", "docs",
        "sed -i '1a # edited by hand' /etc/mongod.conf",
        "sha256sum /etc/mongod.conf",
        "mongodb : Write mongod.conf",
    ),
    Drift(
        "gunicorn-config", "web",
        "sed -i 's/^timeout = .*/timeout = 900/' /etc/catalogue/gunicorn.conf.py",
        "grep '^timeout' /etc/catalogue/gunicorn.conf.py",
        "gunicorn : Write the gunicorn configuration",
    ),
    Drift(
        "celery-unit", "worker",
        "for f in /etc/systemd/system/catalogue-worker-*.service; do"
        " sed -i 's/^Restart=.*/Restart=no/' $f; done && systemctl daemon-reload",
        "grep -h '^Restart=' /etc/systemd/system/catalogue-worker-*.service",
        "celery : Install the worker units",
    ),
    Drift(
        "secret-mode", "app",
        "chmod 0644 /etc/catalogue/catalogue.env",
        "stat -c '%a %U %G' /etc/catalogue/catalogue.env",
        "app : Write the app's environment",
    ),
    Drift(
        "sshd-option", "all",
        # sshd keeps the first value it reads: the kit's own line is edited.
        "sed -i 's/^PermitRootLogin .*/PermitRootLogin yes/'"
        " /etc/ssh/sshd_config.d/00-stackkit.conf && systemctl reload ssh",
        "sshd -T | grep -i '^permitrootlogin'",
        "common : Harden sshd", quick=True,
    ),
    Drift(
        "deleted-file", "db",
        "rm -f /usr/local/sbin/postgresql-backup",
        "sha256sum /usr/local/sbin/postgresql-backup 2>&1",
        "postgresql : Install the backup script",
    ),
    Drift(
        "stopped-unit", "db",
        "systemctl disable --now postgresql-backup.timer",
        "systemctl is-enabled postgresql-backup.timer; systemctl is-active postgresql-backup.timer",
        "postgresql : Enable the backup timer",
    ),
    Drift(
        "removed-package", "all",
        "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q rsync >/dev/null",
        "dpkg-query -W -f '${db:Status-Status}' rsync 2>&1",
        "common : Install base packages", quick=True,
    ),
    Drift(
        "postgresql-grant", "db",
        f"{PSQL} 'GRANT CREATE ON SCHEMA public TO PUBLIC'",
        f"{PSQL} \"SELECT has_schema_privilege('public', 'public', 'CREATE')\"",
        "postgresql : Grant each database's roles what they need and no more",
    ),
    Drift(
        "postgresql-role-attribute", "db",
        f"{PSQL} 'ALTER ROLE catalogue_app CREATEDB'",
        f"{PSQL} \"SELECT rolcreatedb FROM pg_roles WHERE rolname = 'catalogue_app'\"",
        "postgresql : Create roles",
    ),
    Drift(
        "rabbitmq-permissions", "broker",
        "rabbitmqctl -q set_permissions -p catalogue app '^$' '^$' '^$'",
        "rabbitmqctl -q list_user_permissions app",
        "rabbitmq : Report the app user's permissions that would be set",
    ),
    Drift(
        "elasticsearch-template", "search",
        # As an operator would: a changed body PUT by hand, without the kit's version.
        f"{ES}/_template/stackkit-defaults -XPUT -H 'Content-Type: application/json'"
        """ -d '{"template": "*", "order": 0, "settings": {"number_of_replicas": 2}}'""",
        f"{ES}/_template/stackkit-defaults",
        "elasticsearch : Report the index templates that would be put",
    ),
    Drift(
        "nftables-flushed", "all",
        "nft delete table inet stackkit",
        "nft -s list table inet stackkit 2>&1",
        "common : Compare the firewall the kernel holds with /etc/nftables.conf", quick=True,
    ),
    Drift(
        "sysctl-file", "all",
        "sed -i 's/= *[0-9]*$/= 0/' /etc/sysctl.d/60-stackkit.conf",
        "sha256sum /etc/sysctl.d/60-stackkit.conf",
        "common : Write kernel settings", quick=True,
    ),
    Drift(
        "limit-changed", "cache",
        "sed -i 's/^LimitNOFILE=.*/LimitNOFILE=1024/'"
        " /etc/systemd/system/redis-server.service.d/50-stackkit.conf && systemctl daemon-reload",
        "grep '^LimitNOFILE' /etc/systemd/system/redis-server.service.d/50-stackkit.conf",
        "redis : Set the limits of redis-server", quick=True,
    ),
)  # fmt: skip

QUICK = tuple(d.kind for d in DRIFTS if d.quick)
# The roles the quick kinds belong to: three runs of these fit the stack scenario's budget,
# three whole runs (about three minutes each on 2 cores) would not.
QUICK_TAGS = "role::common,role::redis"


class DriftError(AssertionError):
    pass


def inventory_groups(inventory: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", inventory, "--list"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    groups = {"all": []}
    for name, body in data.items():
        if isinstance(body, dict) and "hosts" in body:
            groups[name] = body["hosts"]
            groups["all"] += [h for h in body["hosts"] if h not in groups["all"]]
    return groups


def refuse_kept_hosts(inventory: str) -> None:
    kept = PlayVars(inventory).not_disposable()
    if kept:
        raise SystemExit(
            f"refusing to drift {inventory}: {', '.join(kept)} do not set {DISPOSABLE}: true. "
            "The suite breaks configuration, firewalls and grants on purpose; run it on hosts "
            "whose state may be lost."
        )


def _env() -> dict[str, str]:
    # The JSON document comes first on stdout; profile_tasks' summary (ansible.cfg) follows it.
    return {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_NOCOLOR": "1",
    }


def run_json(command: list[str]) -> dict:
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=_env(), check=False
    )
    start = proc.stdout.find("{")
    if start < 0:
        raise DriftError(
            f"{' '.join(command)}: no JSON (rc {proc.returncode}): {proc.stderr[-2000:]}"
        )
    result, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    result["rc"] = proc.returncode
    return result


def on_hosts(inventory: str, host: str, script: str) -> str:
    """Run a shell script as root on one host; its stdout."""
    result = run_json(
        [str(BIN / "ansible"), host, "-i", inventory, "-b", "-m", "ansible.builtin.shell",
         "-a", script]
    )  # fmt: skip
    answer = result["plays"][0]["tasks"][0]["hosts"][host]
    if answer.get("rc", 1) != 0 and answer.get("failed"):
        raise DriftError(f"on {host}: {script[:200]}: {answer.get('stderr') or answer.get('msg')}")
    return answer["stdout"]


def host_state(inventory: str, host: str) -> tuple[int, str]:
    """How many items of the host's state differ from its record, and a digest of all of it
    (stackkit.kit.host_state, read only: the state alone, as the wiring says a run reads it)."""
    args = (
        '{"trees": "{{ stack_state_trees }}", "paths": "{{ stack_state_paths }}",'
        ' "exclude": "{{ stack_state_exclude }}", "probe_dir": "{{ stack_state_probe_dir }}",'
        ' "path": "{{ stack_state_file }}"}'
    )
    # The wiring's values come from playbooks/group_vars/, which an ad-hoc command loads only
    # with --playbook-dir (molecule's configuration does not name the directory).
    result = run_json(
        [str(BIN / "ansible"), host, "-i", inventory, "--playbook-dir", str(ROOT / "playbooks"),
         "-b", "-m", "stackkit.kit.host_state", "-a", args]
    )  # fmt: skip
    answer = result["plays"][0]["tasks"][0]["hosts"][host]
    if answer.get("failed"):
        raise DriftError(f"on {host}: reading the state failed: {answer.get('msg')}")
    return answer["differ"], answer["state"]


def probe_all(inventory: str, targets: dict[str, list[Drift]]) -> dict[str, str]:
    """Every drift's probe output, one ansible call per host."""
    found = {}
    for host, drifts in targets.items():
        script = "".join(f"echo '@@@ {d.kind}'; ( {d.probe} ) 2>&1; " for d in drifts)
        out = on_hosts(inventory, host, script + "true")
        for block in out.split("@@@ ")[1:]:
            kind, _, body = block.partition("\n")
            found[kind] = body.strip()
    return found


def playbook(inventory: str, tags: str, *args: str) -> tuple[dict, float]:
    started = time.monotonic()
    result = run_json(
        [str(BIN / "ansible-playbook"), "-i", inventory, "playbooks/site.yml",
         *(["--tags", tags] if tags else []), *args]
    )  # fmt: skip
    return result, time.monotonic() - started


def changed_tasks(result: dict) -> set[tuple[str, str]]:
    """(host, task name) of every task result that reported a change."""
    found = set()
    for play in result["plays"]:
        for task in play["tasks"]:
            for host, answer in task["hosts"].items():
                if answer.get("changed"):
                    found.add((host, task["task"]["name"]))
    return found


# The task of playbooks/tasks/state.yml that keeps, per host, whether its roles converge.
STATE_TASK = "Keep what was found for the run's later plays"


def converging(result: dict) -> dict[str, list[str]]:
    """By host, why its roles converged in this run (hosts found as recorded are left out)."""
    found = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] != STATE_TASK:
                continue
            for host, answer in task["hosts"].items():
                state = (answer.get("ansible_facts") or {}).get("__stack_state") or {}
                if state.get("converge"):
                    found[host] = state.get("reasons") or []
    return found


def totals(result: dict) -> dict[str, int]:
    stats = result["stats"].values()
    return {
        key: sum(s.get(key, 0) for s in stats) for key in ("changed", "failures", "unreachable")
    }


def short(text: str) -> str:
    return text if len(text) < 80 else hashlib.sha256(text.encode()).hexdigest()[:12]


def baseline_then_drift(
    inventory: str, chosen: list[Drift], where: dict[str, str], log
) -> tuple[float, dict[str, str], list[str]]:
    """A default run, then each kind made on its host, one at a time: the run's time, what the
    kinds' probes showed before, and what went wrong."""
    # The default run converges whatever earlier checks left on the hosts and records their
    # state, so that the runs after it see only the drift made here (a tagged run, as in the
    # short round, records nothing).
    baseline, baseline_s = playbook(inventory, "")
    converged = sorted(converging(baseline))
    log(f"baseline run: {baseline_s:.1f} s, {totals(baseline)}, converged on {converged}")
    if baseline["rc"]:
        raise DriftError(f"the baseline run failed (rc {baseline['rc']})")
    targets: dict[str, list[Drift]] = {}
    for drift in chosen:
        targets.setdefault(where[drift.kind], []).append(drift)
    before = probe_all(inventory, targets)
    # Each kind must be seen by the state every run reads on its own: after it, the host's
    # state reads differently than before it (the state alone, not the inputs).
    state = {host: host_state(inventory, host) for host in set(where.values())}
    problems = [
        f"{host}: {n} items differ after the baseline run" for host, (n, _) in state.items() if n
    ]
    for drift in chosen:
        host = where[drift.kind]
        on_hosts(inventory, host, drift.apply)
        now = host_state(inventory, host)
        if now[1] == state[host][1] or not now[0]:
            problems.append(f"{drift.kind}: the state a run reads did not see it")
        state[host] = now
    differ = {host: n for host, (n, _) in state.items()}
    log(f"items differing from the record, per host, after every kind: {differ}")
    return baseline_s, before, problems


def run(inventory: str, kinds: list[str], tags: str = "", log=print) -> dict:
    """Apply the drifts, check, repair, no-op; raise DriftError naming every kind that failed."""
    refuse_kept_hosts(inventory)
    groups = inventory_groups(inventory)
    chosen = [d for d in DRIFTS if d.kind in kinds]
    targets: dict[str, list[Drift]] = {}
    where: dict[str, str] = {}
    for drift in chosen:
        if not groups.get(drift.group):
            raise DriftError(f"{drift.kind}: the inventory has no {drift.group} host")
        where[drift.kind] = groups[drift.group][0]
        targets.setdefault(where[drift.kind], []).append(drift)

    baseline_s, before, problems = baseline_then_drift(inventory, chosen, where, log)
    drifted = probe_all(inventory, targets)
    problems += [
        f"{d.kind}: applying it changed nothing the probe shows ({short(before[d.kind])})"
        for d in chosen
        if drifted[d.kind] == before[d.kind]
    ]

    check, check_s = playbook(inventory, tags, "--check", "--diff")
    reported = changed_tasks(check)
    log(f"check run: {check_s:.1f} s, {totals(check)}")
    seen = converging(check)
    for host, reasons in sorted(seen.items()):
        log(f"  {host} converges: {'; '.join(reasons)}")
    problems += [
        f"{host}: its drift was not seen by the state every run reads (its roles were skipped)"
        for host in sorted(set(where.values()) - set(seen))
    ]
    if check["rc"]:
        problems.append(f"the check run failed (rc {check['rc']})")
    for d in chosen:
        if not any(h == where[d.kind] and d.task in name for h, name in reported):
            problems.append(f"{d.kind}: --check did not report it through '{d.task}'")
    after_check = probe_all(inventory, targets)
    problems += [
        f"{d.kind}: --check changed the host"
        for d in chosen
        if after_check[d.kind] != drifted[d.kind]
    ]

    repair, repair_s = playbook(inventory, tags)
    log(f"repair run: {repair_s:.1f} s, {totals(repair)}")
    if repair["rc"]:
        problems.append(f"the repair run failed (rc {repair['rc']})")
    repaired = probe_all(inventory, targets)
    problems += [
        f"{d.kind}: not repaired (was {short(before[d.kind])!r}, is {short(repaired[d.kind])!r})"
        for d in chosen
        if repaired[d.kind] != before[d.kind]
    ]

    noop, noop_s = playbook(inventory, tags)
    noop_totals = totals(noop)
    log(f"no-op run: {noop_s:.1f} s, {noop_totals}")
    still = converging(noop)
    problems += [
        f"{host}: the run after the repair still found it drifted: {'; '.join(reasons)}"
        for host, reasons in sorted(still.items())
    ]
    if noop["rc"] or noop_totals["changed"]:
        again = sorted(f"{h}: {n}" for h, n in changed_tasks(noop))
        problems.append(f"the run after the repair changed {noop_totals['changed']}: {again}")

    figures = {
        "kinds": [d.kind for d in chosen], "tags": tags, "baseline_s": round(baseline_s, 1),
        "check_s": round(check_s, 1), "check": totals(check),
        "repair_s": round(repair_s, 1), "repair": totals(repair),
        "noop_s": round(noop_s, 1), "noop": noop_totals,
        "check_converging": sorted(seen), "noop_converging": sorted(still),
        "problems": problems,
    }  # fmt: skip
    for d in chosen:
        ok = not any(p.startswith(f"{d.kind}:") for p in problems)
        log(f"  {'ok  ' if ok else 'FAIL'} {d.kind} on {where[d.kind]} ({d.task})")
    if problems:
        raise DriftError("\n".join(problems))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--kinds", default="", help="comma-separated; default: every kind")
    parser.add_argument("--quick", action="store_true", help="the stack scenario's short round")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{d.kind}\t{d.group}\t{d.task}" for d in DRIFTS))
        return 0
    known = [d.kind for d in DRIFTS]
    kinds = QUICK if args.quick else [k for k in args.kinds.split(",") if k] or known
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        parser.error(f"unknown kinds {unknown}; --list shows them")
    try:
        figures = run(args.inventory, list(kinds), QUICK_TAGS if args.quick else "")
    except DriftError as error:
        print(f"drift: FAILED\n{error}", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"drift: {len(figures['kinds'])} kinds reported by --check, repaired, then changed=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
