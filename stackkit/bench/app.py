"""Measure the catalogue as its users meet it, through nginx: requests a second and latency
percentiles per endpoint, and how long a new product takes to be stored and to be searchable.

    python -m stackkit.bench.app [--url https://127.0.0.1:8443] [--users 32] [--duration 20]
                              [--phases page,autocomplete-hot,...] [--searchable 20]
                              [--json build/bench/app.json]

Runs against a deployed stack (`make demo`). Each phase is Locust in headless mode
(stackkit/bench/locust_app.py) driving one endpoint flat out with USERS users for DURATION
seconds: the page, autocomplete on a few prefixes asked again and again (answers from the
cache), autocomplete on prefixes never asked before (looked up in Elasticsearch), search, and
POST (writers held under the write rate limit). During the POST phase, products posted one at a
time measure POST -> stored (the insert task ran) and POST -> searchable (the product's made-up
word finds it through /api/search). Prints a table and writes JSON for `make bench-report`.
Every product it adds is a real one; any non-2xx answer makes it exit 1.
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


def word() -> str:
    return "".join(random.choice("bdfgklmnprstvz") + random.choice("aeiou") for _ in range(5))


def until(condition, timeout: float = 60.0, interval: float = 0.05) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError("condition not met")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(p / 100 * len(ordered)) - 1)]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=site_client.DEMO_URL)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase")
    parser.add_argument(
        "--rate", type=float, default=0, help="requests a second per phase (0: flat out)"
    )
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--searchable", type=int, default=20, help="products followed")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--json", type=Path, help="default: build/bench/app[-LABEL].json")
    args = parser.parse_args(argv)
    args.url = args.url.rstrip("/")
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
    print(
        f"{'endpoint':<20}{'users':>6}{'requests':>9}{'non-2xx':>8}{'req/s':>8}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    )
    followed: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        for phase in args.phases.split(","):
            stop = threading.Event()
            follower = None
            if phase == "post":
                follower = threading.Thread(
                    target=follow_products, args=(args.url, token, args.searchable, stop, followed)
                )
                follower.start()
            stats = locust(phase, args, token, Path(tmp))
            if follower:
                follower.join()
            results["endpoints"][phase] = stats
            print(
                f"{phase:<20}{stats['users']:>6}{stats['requests']:>9}{stats['non_2xx']:>8}"
                f"{stats['rps']:>8.0f}{stats['p50']:>8.0f}{stats['p95']:>8.0f}"
                f"{stats['p99']:>8.0f}{stats['max']:>8.0f}",
                flush=True,
            )
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
    out = args.json or ROOT / "build" / "bench" / (
        f"app-{args.label}.json" if args.label else "app.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(s["non_2xx"] for s in results["endpoints"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
