"""Measure the catalogue as its users meet it, through nginx: requests a second and latency
percentiles per endpoint, and how long a new product takes to be stored and to be searchable.

    python -m stackkit.bench.app [--url https://127.0.0.1:8443] [--users 32] [--duration 20]
                              [--phases page,autocomplete-hot,...] [--searchable 20]
                              [--inventory inventories/local] [--connections 16] [--no-wrk]
                              [--ingest 3000] [--paced-rate 40] [--paced-products 600]
                              [--json build/bench/app.json]

Runs against a deployed stack (`make demo`). Each phase is Locust in headless mode
(stackkit/bench/locust_app.py) driving one endpoint flat out with USERS users for DURATION
seconds: the page, autocomplete on a few prefixes asked again and again (answers from the
cache), autocomplete on prefixes never asked before (looked up in Elasticsearch), search, and
POST (writers held under the write rate limit). During the POST phase, products posted one at a
time measure POST -> stored (the insert task ran) and POST -> searchable (the product's made-up
word finds it through /api/search).

Right before the uncached autocomplete and the search phases, wrk measures Elasticsearch itself
answering the app's own bodies for them on the search host, then the web for the same requests
through nginx, with the same generator, connections and duration, and prints the ratio
(stackkit/bench/wrk.py). The ingest phases post products through the batch endpoint, flat out
and at a set rate (ingest-paced: batches of one), and (ingest-singles) one product per POST to
/api/products/ at that rate, and time them until stored with their history and searchable
(stackkit/bench/ingest.py). Each figure comes with the 1-minute load average at its end: on a
shared machine the ratios of one run are the figures to compare.

Prints tables and writes JSON for `make bench-report`. Every product it adds is a real one; any
non-2xx answer, wrk error or product not done makes it exit 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from stackkit import site_client  # the suites' shared client: the demo's address and token
from stackkit.bench import ingest, wrk
from stackkit.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locust_app.py")
# Phase -> the Locust user class that drives it.
PHASES = {
    "page": "Page",
    "autocomplete-hot": "AutocompleteHot",
    "autocomplete-cold": "AutocompleteCold",
    "search": "Search",
    "post": "Writer",
}
WRITERS = 5  # users of the POST phase, each at BENCH_WRITES_PER_USER a second
# The phases that are not Locust's, in the order they run after those.
# ingest-singles: the paced rate, each product one POST to /api/products/ (insert_product's path).
INGEST = ("ingest", "ingest-paced", "ingest-singles")
# The Locust phase before which wrk measures Elasticsearch and the web for the same endpoint.
WRK_BEFORE = {"autocomplete-cold": "autocomplete", "search": "search"}


def load1() -> float:
    """The 1-minute load average: other jobs share the machine's cores."""
    return round(os.getloadavg()[0], 2)


def word() -> str:
    return "".join(random.choice("bdfgklmnprstvz") + random.choice("aeiou") for _ in range(5))


def until(condition, timeout: float = 60.0, interval: float = 0.05) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError("condition not met")


def follow_products(url: str, token: str, count: int, stop: threading.Event, out: dict) -> None:
    """POST one product at a time; time until its history (the insert task's submission record,
    written once the row is committed) exists, and until search finds its own made-up word."""
    session = site_client.session(token)
    stored, searchable = [], []
    for _ in range(count):
        if stop.is_set():
            break
        name = word()
        started = time.monotonic()
        answer = session.post(
            f"{url}/api/products/",
            json={"title": f"Bench {name}", "image_url": "http://images.invalid/bench.png"},
            timeout=10,
        )
        answer.raise_for_status()
        product_id = answer.json()["id"]

        def is_stored(product_id: str = product_id) -> bool:
            history = session.get(f"{url}/api/products/{product_id}/history", timeout=10)
            return history.ok and bool(history.json()["history"])

        def is_found(name: str = name, product_id: str = product_id) -> bool:
            found = session.get(f"{url}/api/search", params={"q": name}, timeout=10)
            return found.ok and product_id in [hit["id"] for hit in found.json()["results"]]

        until(is_stored)
        stored.append(time.monotonic() - started)
        until(is_found)
        searchable.append(time.monotonic() - started)
    out["stored"], out["searchable"] = stored, searchable


def locust(phase: str, args: argparse.Namespace, token: str, directory: Path) -> dict:
    prefix = directory / phase
    users = WRITERS if phase == "post" else args.users
    subprocess.run(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            args.url,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{args.duration}s",
            "--csv",
            str(prefix),
            "--csv-full-history",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
            PHASES[phase],
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        env={
            **os.environ,
            "STACKKIT_API_TOKEN": token,
            "BENCH_WRITES_PER_USER": "1",
            "BENCH_RATE_PER_USER": str(args.rate / users if args.rate else 0),
        },
    )
    with open(f"{prefix}_stats.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    with open(f"{prefix}_stats_history.csv", newline="") as handle:
        history = [
            (int(r["Timestamp"]), float(r["Requests/s"]), float(r["95%"] or 0))
            for r in csv.DictReader(handle)
            if r["Name"] == "Aggregated" and r["95%"] not in ("", "N/A")
        ]
    return {
        "users": users,
        "requests": int(row["Request Count"]),
        "non_2xx": int(row["Failure Count"]),
        "rps": round(float(row["Requests/s"]), 1),
        **{f"p{p}": float(row[f"{p}%"]) for p in (50, 95, 99)},
        "max": round(float(row["Max Response Time"]), 1),
        "history": [(t - history[0][0], rps, p95) for t, rps, p95 in history] if history else [],
    }


class SearchHost:
    """The first search host of the inventory, reached over SSH as Ansible reaches it, with
    Elasticsearch's address there and the alias the app searches."""

    def __init__(self, inventory: str) -> None:
        from stackkit.inventory import DISPOSABLE, PlayVars  # noqa: PLC0415 - needs ansible
        from stackkit.ssh import connection  # noqa: PLC0415

        hosts = PlayVars(inventory, vault=False)
        self.name = hosts.hostnames("search")[0]
        app_host = (hosts.hostnames("web") or hosts.hostnames("worker"))[0]
        self.disposable = (
            hosts.render(self.name, f"{DISPOSABLE} | default(false) | bool", facts=False) is True
        )
        address = hosts.render(self.name, "elasticsearch_http_host", "elasticsearch", facts=False)
        port = hosts.render(self.name, "elasticsearch_http_port", "elasticsearch", facts=False)
        self.url = f"http://{address}:{port}"
        self.alias = str(
            hosts.render(
                app_host,
                "app_extra_environment.ELASTICSEARCH_ALIAS | default(app_elasticsearch_alias)",
                "app",
                facts=False,
            )
        )
        self.batch_max = int(
            hosts.render(
                app_host,
                "app_extra_environment.CATALOGUE_BATCH_MAX | default(app_batch_max)",
                "app",
                facts=False,
            )
        )
        self._hosts = hosts
        self._connection = connection

    def connect(self):
        return self._connection(self._hosts, self.name)


def compare(endpoint: str, args: argparse.Namespace, search, conn, words: list[str]) -> dict:
    """Elasticsearch on its host, then the web through nginx: the same generator, connections
    and duration; requests a second and p50/p99 of each, and the ratio web / Elasticsearch."""
    es = wrk.run_remote(
        conn,
        wrk.lua_script(endpoint, "es", f"/{search.alias}/_search", words),
        search.url,
        args.connections,
        args.duration,
    )
    es_load = load1()
    web = wrk.run_local(
        wrk.lua_script(endpoint, "web", "/api/", words),
        args.url,
        args.connections,
        args.duration,
    )
    return {
        "es": {**es.as_dict(), "load1": es_load},
        "web": {**web.as_dict(), "load1": load1()},
        "ratio": round(web.rps / es.rps, 4) if es.rps else None,
    }


def print_compare(endpoint: str, figures: dict) -> None:
    for side in ("es", "web"):
        f = figures[side]
        where = "elasticsearch" if side == "es" else "web (nginx)"
        print(
            f"wrk {endpoint:<13}{where:<15}{f['rps']:>9.0f}{f['p50']:>8.1f}{f['p99']:>8.1f}"
            f"{f['errors']:>7}{f['rounds']:>7.2f}{f['load1']:>7.2f}",
            flush=True,
        )
    if figures["ratio"] is not None:
        print(f"wrk {endpoint:<13}web / elasticsearch: {figures['ratio']:.1%}", flush=True)


def ingest_phase(phase: str, args: argparse.Namespace, token: str, batch_max: int) -> dict:
    single = phase == "ingest-singles"
    paced = phase == "ingest-paced" or single
    products = args.paced_products if paced else args.ingest
    batch_size = 1 if single else args.paced_batch if paced else (args.batch_size or batch_max)
    plan = ingest.plan(ingest.run_word(), products, batch_size, args.ingest_sample)
    ledger = ingest.run(
        args.url,
        lambda: site_client.session(token),
        plan,
        posters=max(args.ingest_posters, 8 if paced else 1),
        rate=args.paced_rate if paced else 0.0,
        timeout=args.ingest_timeout,
        single=single,
    )
    return {**ledger.figures(), "rate": args.paced_rate if paced else 0, "load1": load1()}


def print_ingest(phase: str, r: dict) -> None:
    def s(value, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    print(
        f"{phase:<13} {r['products']} products in {r['batches']} POSTs of <= {r['batch_size']}"
        + (f" at {r['rate']:g}/s" if r["rate"] else "")
        + f": accepted {r['accepted_per_s']}/s (POST p50 {r['post_p50_ms']} ms,"
        f" p99 {r['post_p99_ms']} ms, {r['retried_posts']} retried), stored with history"
        f" after {s(r['stored_s'], ' s')}, all searchable after {s(r['searchable_s'], ' s')}:"
        f" {s(r['end_to_end_per_s'])} products/s end to end; POST -> searchable"
        f" n={r['sample_found']}/{r['sample']} p50 {s(r['searchable_p50_s'], ' s')}"
        f" p95 {s(r['searchable_p95_s'], ' s')}; load {r['load1']:.2f}",
        flush=True,
    )


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=site_client.DEMO_URL)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase")
    parser.add_argument(
        "--rate", type=float, default=0, help="requests a second per phase (0: flat out)"
    )
    parser.add_argument("--phases", default=",".join([*PHASES, *INGEST]))
    parser.add_argument("--searchable", type=int, default=20, help="products followed")
    parser.add_argument("--inventory", default="inventories/local", help="for the search host")
    parser.add_argument(
        "--wrk",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Elasticsearch's own rate and the web's with wrk before the uncached phases",
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk's, one per thread")
    parser.add_argument("--ingest", type=int, default=3000, help="products of the ingest phase")
    parser.add_argument("--ingest-posters", type=int, default=4, help="concurrent POSTs")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="products per POST (default: app_batch_max)"
    )
    parser.add_argument("--ingest-sample", type=int, default=40, help="products timed each")
    parser.add_argument("--paced-rate", type=float, default=40.0, help="products a second")
    parser.add_argument("--paced-products", type=int, default=600)
    parser.add_argument("--paced-batch", type=int, default=1, help="products per paced POST")
    parser.add_argument(
        "--ingest-timeout", type=float, default=600.0, help="seconds to wait after the last POST"
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--json", type=Path, help="default: build/bench/app[-LABEL].json")
    args = parser.parse_args(argv)
    args.url = args.url.rstrip("/")
    args.phase_list = args.phases.split(",")
    unknown = [p for p in args.phase_list if p not in PHASES and p not in INGEST]
    if unknown:
        parser.error(f"unknown phases {unknown}; known: {', '.join([*PHASES, *INGEST])}")
    args.wrk = args.wrk and any(p in WRK_BEFORE for p in args.phase_list)
    return args


def prepare_wrk(args: argparse.Namespace, search: SearchHost, results: dict):
    """SSH to the search host, wrk there (or refused), and the index's words to misspell."""
    conn = search.connect()
    try:
        installed = wrk.ensure_wrk(conn, search.name, search.disposable)
    except wrk.Refused as refused:
        sys.exit(str(refused))
    words = wrk.vocabulary(wrk.title_words(conn, search.url, search.alias))
    results["wrk"] = {
        "connections": args.connections,
        "duration": args.duration,
        "search_host": search.name,
        "wrk_on_search_host": installed,
        "words": len(words),
        "endpoints": {},
    }
    print(
        f"wrk ({args.connections} connections, {args.duration} s): endpoint, side, req/s,"
        " p50 ms, p99 ms, errors, ES requests per request, load1"
    )
    return conn, words


def locust_phase(phase: str, args: argparse.Namespace, token: str, tmp: Path, followed: dict):
    stop = threading.Event()
    follower = None
    if phase == "post":
        follower = threading.Thread(
            target=follow_products, args=(args.url, token, args.searchable, stop, followed)
        )
        follower.start()
    stats = locust(phase, args, token, tmp)
    if follower:
        follower.join()
    stats["load1"] = load1()
    print(
        f"{phase:<20}{stats['users']:>6}{stats['requests']:>9}{stats['non_2xx']:>8}"
        f"{stats['rps']:>8.0f}{stats['p50']:>8.0f}{stats['p95']:>8.0f}"
        f"{stats['p99']:>8.0f}{stats['max']:>8.0f}{stats['load1']:>7.2f}",
        flush=True,
    )
    return stats


def followed_figures(followed: dict, results: dict) -> None:
    for name in ("stored", "searchable"):
        seconds = followed.get(name)
        if not seconds:
            continue
        results[f"post_to_{name}"] = {
            "n": len(seconds),
            "p50": round(statistics.median(seconds), 3),
            "p95": round(percentile(seconds, 95), 3),
            "max": round(max(seconds), 3),
        }
        r = results[f"post_to_{name}"]
        print(
            f"POST -> {name:<12} n={r['n']:<3} p50 {r['p50']:.2f} s  p95 {r['p95']:.2f} s"
            f"  max {r['max']:.2f} s"
        )


def failed(results: dict) -> bool:
    """A non-2xx answer, a wrk error, or an ingest whose products were not all done."""
    bad = any(s["non_2xx"] for s in results["endpoints"].values())
    bad |= any(
        side["errors"]
        for figures in results.get("wrk", {}).get("endpoints", {}).values()
        for side in (figures["es"], figures["web"])
    )
    bad |= any(
        r["failed_posts"] or r["end_to_end_s"] is None
        for r in (results.get(p.replace("-", "_")) for p in INGEST)
        if r
    )
    return bad


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    token = site_client.api_token()
    site_client.session().get(f"{args.url}/", timeout=10).raise_for_status()
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.machine()}",
        "label": args.label,
        "users": args.users,
        "rate": args.rate,
        "duration": args.duration,
        "endpoints": {},
    }
    phases = args.phase_list
    needs_host = args.wrk or any(p in INGEST for p in phases)
    search = SearchHost(args.inventory) if needs_host else None
    print(
        f"{'endpoint':<20}{'users':>6}{'requests':>9}{'non-2xx':>8}{'req/s':>8}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}{'load1':>7}"
    )
    conn, words = prepare_wrk(args, search, results) if args.wrk else (None, [])
    followed: dict = {}
    out = args.json or ROOT / "build" / "bench" / (
        f"app-{args.label}.json" if args.label else "app.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        for phase in phases:
            if phase in WRK_BEFORE and conn is not None:
                endpoint = WRK_BEFORE[phase]
                figures = compare(endpoint, args, search, conn, words)
                results["wrk"]["endpoints"][endpoint] = figures
                print_compare(endpoint, figures)
            if phase in INGEST:
                r = ingest_phase(phase, args, token, search.batch_max)
                results[phase.replace("-", "_")] = r
                print_ingest(phase, r)
            else:
                results["endpoints"][phase] = locust_phase(phase, args, token, Path(tmp), followed)
            # After each phase: a run cut short keeps what it measured.
            out.write_text(json.dumps(results, indent=2) + "\n")
    followed_figures(followed, results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
