"""The catalogue's promise under faults: a steady stream of products goes through nginx while,
one after another, services are killed or restarted on the hosts of an inventory. Afterwards
every product answered 202 must be stored in PostgreSQL once, indexed in Elasticsearch and
have its MongoDB history, and no product refused (4xx, 503, no answer) may have been stored.

Destructive: it kills and restarts services. Run it on disposable hosts only (`make chaos`).
Prints the figures and exits 1 on any loss or duplicate.

    python -m stackkit.chaos --inventory inventories/local --url https://127.0.0.1:8443
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import testinfra

from stackkit import site_client  # the suites' shared client: test CA and API token
from stackkit.alerts import ALERT_WITHIN, Alertmanager, AlertNotSeen, prove, wait_for
from stackkit.stats import percentile

ROOT = Path(__file__).resolve().parents[1]
LOCAL_VAULT_PASSWORD = ROOT / "tests" / "hosts" / "local-vault-password"

# name: (inventory pattern, command run as root on each host it matches). Restarts go through
# systemd, kills use SIGKILL: no process gets to finish what it was doing.
FAULTS: dict[str, tuple[str, str]] = {
    "worker-kill": (
        "worker",
        "systemctl kill --signal=SIGKILL catalogue-worker-default.service",
    ),
    "broker-restart": ("broker[0]", "systemctl restart rabbitmq-server.service"),
    "db-restart": ("db[0]", "systemctl restart postgresql.service"),
    "cache-restart": ("cache[0]", "systemctl restart redis-server.service"),
    "search-outage": (
        "search[0]",
        "systemctl stop elasticsearch.service && sleep 5 && systemctl start elasticsearch.service",
    ),
    "docs-restart": ("docs[0]", "systemctl restart mongod.service"),
    "web-worker-kill": (
        "web[0]",
        "pkill --signal KILL --newest --parent"
        " $(systemctl show --property MainPID --value catalogue-web.service)",
    ),
}
# What `make test` runs: the faults that lost products before the outbox, and restarts of the
# cache and the document store that every accepted product must live through too.
SHORT = ("broker-restart", "worker-kill", "db-restart", "cache-restart", "docs-restart")

# Outages held until their alert fires (--alerts, on an inventory with a monitor group): name:
# (inventory pattern, unit stopped on its first host, the alert's labels as regular expressions;
# `instance` is added: that host). Each must reach Alertmanager within ALERT_WITHIN s of the stop
# and be resolved within ALERT_WITHIN s of the start, while products keep streaming.
OUTAGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "broker-down": (
        "broker",
        "rabbitmq-server.service",
        {"alertname": "ServiceDown", "name": r"rabbitmq-server\.service"},
    ),
    "worker-down": (
        "worker",
        "catalogue-worker-default.service",
        {"alertname": "ServiceDown", "name": r"catalogue-worker-default\.service"},
    ),
    "db-down": (
        "db",
        "postgresql.service",
        {"alertname": "ServiceDown", "name": r"postgresql@.+\.service"},
    ),
    "cache-down": (
        "cache",
        "redis-server.service",
        {"alertname": "ServiceDown", "name": r"redis-server\.service"},
    ),
    "search-down": (
        "search",
        "elasticsearch.service",
        {"alertname": "ServiceDown", "name": r"elasticsearch\.service"},
    ),
    "docs-down": (
        "docs",
        "mongod.service",
        {"alertname": "ServiceDown", "name": r"mongod\.service"},
    ),
    "exporter-down": (
        "all",
        "prometheus-node-exporter.service",
        {"alertname": "TargetDown", "job": "node"},
    ),
}

# Runs in the app's own environment on an app host (catalogue-manage shell): reads the run's
# title prefix from standard input and prints one JSON line: every product stored under it (id,
# title), and which of them are indexed and have their history. The controller compares that
# with what it was answered: a run's accepted ids would not fit on a command line.
CHECK = """
import json, sys
from catalogue.documents import get_store
from catalogue.models import Product
from catalogue.search.client import get_client
from catalogue.search.indexer import alias_name
prefix = sys.stdin.read()
rows = [(str(pid), title) for pid, title in
        Product.objects.filter(title__startswith=prefix).values_list("id", "title")]
ids = sorted({pid for pid, _ in rows})
indexed = []
for start in range(0, len(ids), 1000):
    found = get_client().multi_get(alias_name(), ids[start:start + 1000], ["title"])
    indexed += [pid for pid, doc in found.items() if doc is not None]
# One pass over the history collection: a query per product is quadratic on a large one.
histories = {d["product_id"] for d in get_store()._history().find({}, {"product_id": 1, "_id": 0})}
print(json.dumps({
    "rows": rows,
    "indexed": sorted(indexed),
    "history": [pid for pid in ids if pid in histories],
}))
"""


class ImageHandler(BaseHTTPRequestHandler):
    """Every product's image: a few bytes of PNG, at once."""

    PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.PNG)))
        self.end_headers()
        self.wfile.write(self.PNG)


@dataclass
class Stream:
    """Posts products until stopped; remembers what each answer was."""

    url: str
    images: str
    token: str
    prefix: str
    accepted: dict[str, str] = field(default_factory=dict)  # title -> id
    refused: Counter = field(default_factory=Counter)  # title -> status
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    count: int = 0

    def next_title(self) -> str:
        with self.lock:
            self.count += 1
            return f"{self.prefix} {self.count:06d}"

    def run(self, interval: float) -> None:
        session = site_client.session(self.token)
        while not self.stop.is_set():
            started = time.monotonic()
            title = self.next_title()
            payload = {"title": title, "image_url": f"{self.images}/{uuid.uuid4().hex}.png"}
            try:
                response = session.post(f"{self.url}/api/products/", json=payload, timeout=15)
                status = str(response.status_code)
                product_id = response.json().get("id") if status == "202" else None
            except (requests.RequestException, ValueError) as error:
                status, product_id = type(error).__name__, None
            elapsed = time.monotonic() - started
            with self.lock:
                self.statuses[status] += 1
                self.latencies.append(elapsed)
                if product_id:
                    self.accepted[title] = product_id
                else:
                    self.refused[title] = status
            self.stop.wait(max(0.0, interval - elapsed))


def host_of(pattern: str, inventory: str) -> list:
    """testinfra hosts for an inventory pattern: a group or host name, or group[N]."""
    group, _, index = pattern.partition("[")
    hosts = testinfra.get_hosts([f"ansible://{group}"], ansible_inventory=inventory, sudo=True)
    if index:
        number = int(index.rstrip("]"))
        hosts = hosts[number : number + 1]
    return hosts


def check(app_host, stream: Stream) -> dict:
    """What the hosts hold of this run, judged against what the stream was answered."""
    command = (
        f"printf %s {shlex.quote(stream.prefix)} | catalogue-manage shell --verbosity 0"
        f" -c {shlex.quote(CHECK)}"
    )
    held = json.loads(app_host.check_output(command).splitlines()[-1])
    return judge(held, set(stream.accepted.values()), set(stream.refused))


def judge(held: dict, accepted: set[str], refused: set[str]) -> dict:
    """The accepted ids stored, indexed and with history; titles stored more than once; refused
    titles that were stored all the same."""
    stored = {pid for pid, _ in held["rows"]}
    titles = Counter(title for _, title in held["rows"])
    return {
        "stored": sorted(accepted & stored),
        "indexed": sorted(accepted & set(held["indexed"])),
        "history": sorted(accepted & set(held["history"])),
        "duplicated": sorted(t for t, n in titles.items() if n > 1),
        "refused_stored": sorted(t for t in titles if t in refused),
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--url", help="the site; default: nginx on the first web host")
    parser.add_argument(
        "--disposable",
        action="store_true",
        help="the hosts may be harmed (implied for inventories/local)",
    )
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--short", action="store_true", help=f"only {', '.join(SHORT)}")
    parser.add_argument(
        "--alerts",
        nargs="?",
        const=",".join(OUTAGES),
        default="",
        metavar="OUTAGES",
        help="then hold outages until their alert fires (default: all of"
        f" {', '.join(OUTAGES)}); needs a monitor group",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=float, default=5.0, help="products per second")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--gap", type=float, default=6.0, help="seconds of traffic between faults")
    parser.add_argument("--settle", type=float, default=600.0, help="seconds to wait for the work")
    args = parser.parse_args()
    if not args.disposable and Path(args.inventory).resolve() != ROOT / "inventories" / "local":
        parser.error(f"{args.inventory} is not the local hosts; add --disposable to harm it")
    args.fault_list = list(SHORT) if args.short else args.faults.split(",")
    unknown = [f for f in args.fault_list if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    args.outage_list = [name for name in args.alerts.split(",") if name]
    unknown = [name for name in args.outage_list if name not in OUTAGES]
    if unknown:
        parser.error(f"unknown outages {unknown}; known: {', '.join(OUTAGES)}")
    return args


def hold_outages(args: argparse.Namespace, manager: Alertmanager) -> dict:
    """Each outage in turn: the unit stops, its alert must fire; it starts, the alert must be
    resolved. Returns the seconds of each, by outage."""
    times = {}
    for name in args.outage_list:
        pattern, unit, labels = OUTAGES[name]
        victims = host_of(pattern, args.inventory)
        if not victims:
            print(f"  {name}: no host in {pattern}, skipped")
            continue
        victim = victims[0]
        labels = {**labels, "instance": re.escape(victim.backend.host)}
        time.sleep(args.gap)
        fire, resolve = prove(manager, victim, unit, [labels], ALERT_WITHIN)[labels["alertname"]]
        times[name] = {
            "alert": labels["alertname"],
            "host": victim.backend.host,
            "fire_seconds": round(fire, 1),
            "resolve_seconds": round(resolve, 1),
        }
        print(f"  {name}: {labels['alertname']} fired after {fire:.1f} s, resolved {resolve:.1f} s")
    return times


def inject(args: argparse.Namespace, stream: Stream, manager: Alertmanager | None = None) -> dict:
    """Stream products from several clients while the faults run one after another, then the
    outages (with `manager`, the Alertmanager that must see each). Returns the outages' alert
    times."""
    alert_times: dict = {}
    interval = args.clients / args.rate
    clients = [
        threading.Thread(target=stream.run, args=(interval,), daemon=True)
        for _ in range(args.clients)
    ]
    for client in clients:
        client.start()
    try:
        for number in range(1, args.rounds + 1):
            for fault in args.fault_list:
                time.sleep(args.gap)
                pattern, command = FAULTS[fault]
                started = time.monotonic()
                for host in host_of(pattern, args.inventory):
                    host.check_output(command)
                print(f"  round {number}: {fault} ({time.monotonic() - started:.1f} s)")
        if manager is not None:
            alert_times = hold_outages(args, manager)
        time.sleep(args.gap)
    finally:
        stream.stop.set()
        for client in clients:
            client.join()
    return alert_times


def settle(app_host, stream: Stream, seconds: float) -> tuple[dict, float]:
    """Wait until every accepted product is stored, indexed and has its history, or time out."""
    started = time.monotonic()
    accepted = set(stream.accepted.values())
    while True:
        found = check(app_host, stream)
        done = set(found["stored"]) & set(found["indexed"]) & set(found["history"])
        if done >= accepted or time.monotonic() - started > seconds:
            return found, time.monotonic() - started
        time.sleep(5)


def figures(stream: Stream, found: dict, settled: float) -> dict:
    accepted = set(stream.accepted.values())
    return {
        "sent": stream.count,
        "accepted": len(accepted),
        "refused": dict(Counter(stream.refused.values())),
        "statuses": dict(stream.statuses),
        "stored": len(set(found["stored"])),
        "indexed": len(set(found["indexed"])),
        "with_history": len(set(found["history"])),
        "lost": len(accepted - set(found["stored"])),
        "not_indexed": len(accepted - set(found["indexed"])),
        "no_history": len(accepted - set(found["history"])),
        "duplicated": len(found["duplicated"]),
        "refused_but_stored": len(found["refused_stored"]),
        "post_p50_ms": round(percentile(stream.latencies, 50) * 1000, 1),
        "post_p99_ms": round(percentile(stream.latencies, 99) * 1000, 1),
        "settled_s": round(settled, 1),
    }


def main() -> int:
    args = arguments()
    app_host = host_of("web[0]", args.inventory)[0]
    if not args.url:
        port = app_host.ansible.get_variables().get("nginx_tls_port", 443)
        args.url = f"https://{app_host.ansible.get_variables()['ansible_host']}:{port}"
    worker = host_of("worker[0]", args.inventory)[0]
    gateway = re.search(r"via (\S+)", worker.check_output("ip -4 route show default")).group(1)
    images = ThreadingHTTPServer((gateway, 0), ImageHandler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    run = uuid.uuid4().hex[:8]
    stream = Stream(
        url=args.url.rstrip("/"),
        token=site_client.api_token(args.inventory),
        images=f"http://{gateway}:{images.server_address[1]}/img",
        prefix=f"chaos {run}",
    )
    print(f"chaos {run}: {args.rounds} round(s) of {', '.join(args.fault_list)} at {args.rate:g}/s")
    manager = Alertmanager.of_inventory(args.inventory) if args.outage_list else None
    if manager is not None:
        # The stack starts quiet: an alert active now would be blamed on the first outage.
        if not wait_for(lambda: not manager.active_names(), ALERT_WITHIN, 1.0):
            raise SystemExit(f"chaos: alerts active before any fault: {manager.active_names()}")
        print(f"  then outages until their alert fires: {', '.join(args.outage_list)}")
    try:
        alert_times = inject(args, stream, manager)
    except AlertNotSeen as error:
        print(f"chaos {run}: FAILED ({error})", file=sys.stderr)
        return 1
    found, settled = settle(app_host, stream, args.settle)
    images.shutdown()
    result = figures(stream, found, settled)
    if manager is not None:
        result["alerts"] = alert_times
        # Recovered and settled: nothing may still be firing.
        wait_for(lambda: not manager.active_names(), ALERT_WITHIN, 1.0)
        result["active_after"] = manager.active_names()
    print(json.dumps(result, indent=2))
    bad = [
        key
        for key in (
            "lost",
            "not_indexed",
            "no_history",
            "duplicated",
            "refused_but_stored",
            "active_after",
        )
        if result.get(key)
    ]
    if bad:
        print(f"chaos {run}: FAILED ({', '.join(bad)})", file=sys.stderr)
    if not result["accepted"]:
        print(f"chaos {run}: FAILED (no product was accepted)", file=sys.stderr)
    return 1 if bad or not result["accepted"] else 0


if __name__ == "__main__":
    sys.exit(main())
