"""The users `make bench-app` (stackkit/bench/app.py) sends through nginx, one kind per phase: each
class is one endpoint, named as the report prints it. They wait for nothing between requests:
a phase measures what the stack serves flat out at the given number of users, or its latency at
a set rate (BENCH_RATE_PER_USER).

Writers send the API token in STACKKIT_API_TOKEN and keep under the write rate limit
(BENCH_WRITES_PER_USER a second each).
"""

from __future__ import annotations

import os
import random
import string
import uuid
from typing import ClassVar

from locust import FastHttpUser, constant, constant_throughput, task

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def made_up_word(syllables: int = 4) -> str:
    return "".join(random.choice(CONSONANTS) + random.choice(VOWELS) for _ in range(syllables))


# Twenty prefixes asked again and again: after the first round every answer is a cached one.
HOT = [made_up_word(2)[:3] for _ in range(20)]


def new_prefix() -> str:
    """A prefix nobody asked for yet (the cache cannot hold it)."""
    return "".join(random.choices(string.ascii_lowercase, k=6))


def pace():
    """Flat out, or BENCH_RATE_PER_USER requests a second per user (a set offered load)."""
    rate = float(os.environ.get("BENCH_RATE_PER_USER") or 0)
    return constant_throughput(rate) if rate > 0 else constant(0)


class Bench(FastHttpUser):
    abstract = True
    wait_time = pace()
    # The local hosts' certificate comes from their test CA, which Locust's client cannot be
    # given: it skips verification (the other suites verify the chain).
    insecure = True


class Page(Bench):
    @task
    def page(self) -> None:
        self.client.get("/", name="page")


class AutocompleteHot(Bench):
    @task
    def hot(self) -> None:
        self.client.get(f"/api/autocomplete?q={random.choice(HOT)}", name="autocomplete hot")


class AutocompleteCold(Bench):
    @task
    def cold(self) -> None:
        self.client.get(f"/api/autocomplete?q={new_prefix()}", name="autocomplete cold")


class Search(Bench):
    @task
    def search(self) -> None:
        self.client.get(f"/api/search?q={made_up_word()}", name="search")


class Writer(Bench):
    wait_time = constant_throughput(float(os.environ.get("BENCH_WRITES_PER_USER", "2")))
    headers: ClassVar[dict[str, str]] = {
        "Authorization": f"Bearer {os.environ.get('STACKKIT_API_TOKEN', '')}"
    }

    @task
    def add(self) -> None:
        payload = {
            "title": f"bench {uuid.uuid4().hex[:10]}",
            "image_url": "http://images.invalid/bench.png",
        }
        with self.client.post(
            "/api/products/", json=payload, headers=self.headers, name="POST", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:200]}")
