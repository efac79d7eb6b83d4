#!/usr/bin/env python3
"""Measure the catalogue as a user meets it: how fast a POST is accepted, and how long until the
product is stored and then searchable.

    python tests/bench/app.py [--url https://127.0.0.1:8443] [--posts 50] [--concurrency 8]
                              [--searchable 10] [--prefixes 30]

Runs against a deployed stack (`make demo`). Prints, in milliseconds, the latency of sequential
POSTs (median, 95th percentile, max), the throughput of concurrent POSTs, and for a few
products the time from POST to stored (the insert task ran) and to searchable (the product's
own made-up word finds it through /api/search), and what the autocomplete cache is worth: the
latency of answers from Redis against answers from Elasticsearch. Every product it adds is a
real one.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "hosts"))
import site_client


def word() -> str:
    return "".join(random.choice("bdfgklmnprstvz") + random.choice("aeiou") for _ in range(5))


def post(session: requests.Session, url: str, title: str) -> tuple[str, float]:
    started = time.perf_counter()
    response = session.post(
        f"{url}/api/products/",
        json={"title": title, "image_url": "http://127.0.0.1/bench.png"},
        timeout=10,
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["id"], elapsed


def stored(session: requests.Session, url: str, product_id: str) -> bool:
    """The history endpoint reads without side effects (a product GET counts a view); the
    submission document is written right after the row is committed."""
    answer = session.get(f"{url}/api/products/{product_id}/history", timeout=10)
    return answer.ok and bool(answer.json()["history"])


def autocomplete(session: requests.Session, url: str, q: str) -> tuple[bool, float]:
    started = time.perf_counter()
    answer = session.get(f"{url}/api/autocomplete", params={"q": q}, timeout=10)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return answer.json()["cached"], elapsed


def autocomplete_rounds(
    session: requests.Session, url: str, prefixes: list[str]
) -> tuple[list[float], list[float]]:
    """Ask for every prefix, round after round, until as many answers came from the cache: for a
    moment after the index gained a product a process caches nothing, so rounds miss again."""
    from_cache: list[float] = []
    looked_up: list[float] = []
    deadline = time.perf_counter() + 30
    while len(from_cache) < len(prefixes) and time.perf_counter() < deadline:
        for q in prefixes:
            cached, elapsed = autocomplete(session, url, q)
            (from_cache if cached else looked_up).append(elapsed)
    return from_cache, looked_up


def until(condition, timeout: float = 120.0, interval: float = 0.05) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():
            return time.perf_counter() - started
        time.sleep(interval)
    raise TimeoutError("condition not met")


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return (
        f"{name:<28} n={len(ms):<4} median {statistics.median(ms):7.1f} ms"
        f"   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=site_client.DEMO_URL)
    parser.add_argument("--posts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--searchable", type=int, default=10)
    parser.add_argument("--prefixes", type=int, default=30)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    token = site_client.api_token()
    session = site_client.session(token)
    session.get(f"{url}/", timeout=10).raise_for_status()

    latencies = [post(session, url, f"Bench {word()}")[1] for _ in range(args.posts)]
    print(summary("POST accepted (sequential)", latencies))

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        posted = list(
            pool.map(
                lambda _: post(site_client.session(token), url, f"Bench {word()}"),
                range(args.posts),
            )
        )
    wall = time.perf_counter() - started
    print(summary(f"POST accepted ({args.concurrency} at once)", [t for _, t in posted]))
    print(f"{'throughput':<28} {args.posts / wall:.1f} POSTs/s")
    # The workers catch up with the burst; the next figures start from an idle queue.
    backlog = until(lambda: all(stored(session, url, pid) for pid, _ in posted[-5:]))
    print(f"{'burst stored after':<28} {(wall + backlog) * 1000:.0f} ms from its first POST")

    stored_after, searchable = [], []
    for _ in range(args.searchable):
        name = word()
        product_id, accepted = post(session, url, f"Bench {name}")

        def is_found(name: str = name, product_id: str = product_id) -> bool:
            answer = session.get(f"{url}/api/search", params={"q": name}, timeout=10)
            return answer.ok and product_id in [hit["id"] for hit in answer.json()["results"]]

        stored_after.append(accepted + until(partial(stored, session, url, product_id)))
        searchable.append(accepted + until(is_found))
    print(summary("POST to stored", stored_after))
    print(summary("POST to searchable", searchable))

    from_cache, looked_up = autocomplete_rounds(
        session, url, [word()[:3] for _ in range(args.prefixes)]
    )
    for name, seconds in (
        ("autocomplete from cache", from_cache),
        ("autocomplete looked up", looked_up),
    ):
        print(summary(name, seconds) if seconds else f"{name:<28} none")


if __name__ == "__main__":
    main()
