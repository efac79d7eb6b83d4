"""A mixed load on the catalogue through nginx, as its users make it: the page, autocomplete on
prefixes of words the catalogue holds, search (with typos), and new products. Locust counts
every non-2xx as a failure and exits 1 when there was one.

    make load URL=https://127.0.0.1:8443 DURATION=5m USERS=20

Writes send the API token in STACKKIT_API_TOKEN (`make load` reads it from the local vault).

Writes products titled "load <word> <word>": run it on disposable hosts.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import ClassVar

from locust import FastHttpUser, between, events, task

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
# Made-up words (one term each), shared by every user so that prefixes repeat and the cache
# and the index see a realistic mix of hot and cold queries.
WORDS = [
    "".join(random.choice(CONSONANTS) + random.choice(VOWELS) for _ in range(4)) for _ in range(200)
]
IMAGE_URL = "http://images.invalid/load.png"
# A file to which every accepted product's id is appended (stackkit/bench/deploy.py then checks
# that each one was stored); none when unset.
ACCEPTED = os.environ.get("STACKKIT_ACCEPTED_LOG", "")


def misspell(text: str) -> str:
    middle = len(text) // 2
    return text[:middle] + text[middle + 1 :]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--image-url", default=IMAGE_URL, help="image of every new product")


class Shopper(FastHttpUser):
    wait_time = between(0.05, 0.2)
    # The local hosts' certificate comes from their test CA, which Locust's client cannot be
    # given: it skips verification (the other suites verify the chain).
    insecure = True
    write_headers: ClassVar[dict[str, str]] = {
        "Authorization": f"Bearer {os.environ.get('STACKKIT_API_TOKEN', '')}"
    }

    @task(2)
    def page(self) -> None:
        self.client.get("/", name="/")

    @task(10)
    def autocomplete(self) -> None:
        word = random.choice(WORDS)
        self.client.get(f"/api/autocomplete?q={word[: random.randint(2, 5)]}", name="autocomplete")

    @task(4)
    def search(self) -> None:
        word = random.choice(WORDS)
        query = misspell(word) if random.random() < 0.3 else word
        self.client.get(f"/api/search?q={query}", name="search")

    @task(1)
    def add(self) -> None:
        title = f"load {random.choice(WORDS)} {random.choice(WORDS)} {uuid.uuid4().hex[:6]}"
        payload = {"title": title, "image_url": self.environment.parsed_options.image_url}
        with self.client.post(
            "/api/products/",
            json=payload,
            headers=self.write_headers,
            name="POST /api/products/",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif ACCEPTED:
                with open(ACCEPTED, "a") as accepted:
                    accepted.write(response.json()["id"] + "\n")
