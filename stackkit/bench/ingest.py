"""The ingest phases of `make bench-app`: products through the API's batch endpoint, and the time
until every one is stored with its history and searchable.

Flat out: N products in batches of the app's cap (app_batch_max), posted by a few concurrent
posters as fast as the API accepts them. Paced: products at a set rate (the issue's "POST ->
searchable at 40 products/s"). Either way a product is done when its batch's status says done
(the batch's summary, written once every product is stored with its history) and the
search API finds it: one made-up word shared by the run's titles, searched until /api/search's
`total` (the hit count of its phrase round) is N. A sample of products also carries a word of
its group (at most a page of search results per group): one search per group and poll round
tells when each sample product became searchable, so that timing them costs a few requests a
second rather than one search per product.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

from stackkit.stats import percentile

PAGE = 20  # results per page of /api/search: a sample group is at most this many products
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def run_word(rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(5))


@dataclass
class Plan:
    """What is posted: every product's title, which batch it goes in, which are sampled."""

    run: str
    batches: list[list[str]]  # titles, per POST
    sample: dict[str, int]  # title -> its group

    @property
    def products(self) -> int:
        return sum(len(b) for b in self.batches)

    def group_word(self, group: int) -> str:
        return group_word(self.run, group)

    @property
    def groups(self) -> list[int]:
        return sorted(set(self.sample.values()))

    @cached_property
    def batch_of(self) -> dict[str, int]:
        return {title: i for i, batch in enumerate(self.batches) for title in batch}


def group_word(run: str, group: int) -> str:
    return f"{run}g{group}"  # one token for the standard analyser: letters and digits


def plan(run: str, products: int, batch_size: int, sample: int) -> Plan:
    """`products` titles carrying the run's word, in batches of `batch_size`; `sample` of them,
    spread evenly over the run, also carry their group's word (PAGE per group)."""
    if products < 1 or batch_size < 1:
        raise ValueError("products and batch_size must be at least 1")
    sample = min(sample, products)
    picked = {round(k * products / sample) for k in range(sample)} if sample else set()
    titles, groups = [], {}
    for number in range(products):
        title = f"Ingest {run} {number:05d}"
        if number in picked:
            group = len(groups) // PAGE
            title += f" {group_word(run, group)}"
            groups[title] = group
        titles.append(title)
    batches = [titles[i : i + batch_size] for i in range(0, products, batch_size)]
    return Plan(run=run, batches=batches, sample=groups)


@dataclass
class Ledger:
    """What happened, in seconds of a monotonic clock: filled by the posters and the watcher
    (each under the lock), read by figures()."""

    plan: Plan
    started: float | None = None  # the first POST sent
    sent: dict[int, float] = field(default_factory=dict)  # batch -> its (last) POST sent
    answered: dict[int, float] = field(default_factory=dict)  # batch -> its 202
    post_seconds: list[float] = field(default_factory=list)  # every POST, retries too
    status_urls: dict[int, str] = field(default_factory=dict)
    retried: int = 0  # 429 or 503 answers, posted again
    failed: dict[str, int] = field(default_factory=dict)  # other answers, by status
    done: dict[int, float] = field(default_factory=dict)  # batch -> status seen done
    found: dict[str, float] = field(default_factory=dict)  # sample title -> seen by search
    all_searchable: float | None = None  # the run's word first found N times
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posting(self, batch: int, at: float) -> None:
        with self.lock:
            self.started = at if self.started is None else min(self.started, at)
            self.sent[batch] = at

    def posted(self, batch: int, at: float, status: int | str, status_url: str | None) -> None:
        with self.lock:
            self.post_seconds.append(at - self.sent[batch])
            if status == 202 and status_url:
                self.answered[batch] = at
                self.status_urls[batch] = status_url
            elif status in (429, 503):
                self.retried += 1
            else:
                self.failed[str(status)] = self.failed.get(str(status), 0) + 1

    def seen(self, titles: list[str], at: float) -> None:
        """Titles a sample group's search returned."""
        with self.lock:
            for title in titles:
                if title in self.plan.sample and title not in self.found:
                    self.found[title] = at

    def pending_groups(self) -> list[int]:
        with self.lock:
            return sorted({g for t, g in self.plan.sample.items() if t not in self.found})

    def next_unfinished(self) -> int | None:
        """The first answered batch whose status was not yet seen done, in posting order."""
        with self.lock:
            for batch in sorted(self.answered):
                if batch not in self.done:
                    return batch
            return None

    def all_posted(self) -> bool:
        with self.lock:
            return len(self.answered) == len(self.plan.batches)

    def all_done(self) -> bool:
        with self.lock:
            return len(self.done) == len(self.plan.batches)

    def complete(self) -> bool:
        """Every batch done, the run's word found N times and every sample product seen."""
        return self.all_done() and self.all_searchable is not None and not self.pending_groups()

    def figures(self) -> dict:
        n = self.plan.products
        first = self.started or 0.0
        last_answer = max(self.answered.values(), default=first)
        stored = max(self.done.values()) - first if self.all_done() else None
        searchable = self.all_searchable - first if self.all_searchable is not None else None
        both = stored is not None and searchable is not None
        finished = max(stored, searchable) if both else None
        delays = [
            at - self.sent[self.plan.batch_of[title]]
            for title, at in self.found.items()
            if self.plan.batch_of[title] in self.sent
        ]
        return {
            "products": n,
            "batches": len(self.plan.batches),
            "batch_size": max(len(b) for b in self.plan.batches),
            "accepted": sum(len(self.plan.batches[b]) for b in self.answered),
            "retried_posts": self.retried,
            "failed_posts": dict(self.failed),
            "post_p50_ms": round(percentile(self.post_seconds, 50) * 1000, 1),
            "post_p99_ms": round(percentile(self.post_seconds, 99) * 1000, 1),
            "accepted_per_s": round(n / (last_answer - first), 1) if last_answer > first else 0,
            "posting_s": round(last_answer - first, 2),
            "stored_s": round(stored, 2) if stored is not None else None,
            "searchable_s": round(searchable, 2) if searchable is not None else None,
            "end_to_end_s": round(finished, 2) if finished else None,
            "end_to_end_per_s": round(n / finished, 1) if finished else None,
            "sample": len(self.plan.sample),
            "sample_found": len(delays),
            "searchable_p50_s": round(percentile(delays, 50), 3) if delays else None,
            "searchable_p95_s": round(percentile(delays, 95), 3) if delays else None,
            "searchable_max_s": round(max(delays), 3) if delays else None,
        }


IMAGE = "http://images.invalid/bench.png"  # fails at once: the image task costs little


def payload(titles: list[str]) -> dict:
    return {"products": [{"title": title, "image_url": IMAGE} for title in titles]}


def request(titles: list[str], single: bool) -> tuple[str, dict]:
    """The path and body of one POST: a batch, or (single) one product on its own endpoint."""
    if single:
        [title] = titles
        return "/api/products/", {"title": title, "image_url": IMAGE}
    return "/api/products/batch", payload(titles)


# -- the run against a site ----------------------------------------------------------------------
def post_batches(
    url: str, session, ledger: Ledger, queue: list[int], schedule, single: bool = False
) -> None:
    """One poster: takes the next batch, waits for its slot (paced runs), posts it until the
    API answers other than 429 or 503 (those are posted again after a short pause)."""
    while True:
        with ledger.lock:
            if not queue:
                return
            batch = queue.pop(0)
        slot = schedule(batch)
        if slot is not None:
            time.sleep(max(0.0, slot - time.monotonic()))
        while True:
            ledger.posting(batch, time.monotonic())
            try:
                path, body = request(ledger.plan.batches[batch], single)
                answer = session.post(f"{url}{path}", json=body, timeout=30)
                status = answer.status_code
                status_url = answer.json().get("status_url") if status == 202 else None
            except Exception as error:  # counted, and the batch goes again
                status, status_url = type(error).__name__, None
            ledger.posted(batch, time.monotonic(), status, status_url)
            if status not in (429, 503):
                break  # accepted, or refused for a reason the bench cannot cure: reported
            time.sleep(0.2)


def watch(url: str, session, ledger: Ledger, stop: threading.Event, interval: float) -> None:
    """Polls, until everything is done or stopped: the sample groups' searches, the batches'
    statuses in posting order (one pending answer ends the round), and the run's word."""
    plan = ledger.plan
    while not stop.is_set() and not ledger.complete():
        for group in ledger.pending_groups():
            found = session.get(
                f"{url}/api/search", params={"q": plan.group_word(group)}, timeout=10
            )
            if found.ok:
                ledger.seen([r.get("title", "") for r in found.json()["results"]], time.monotonic())
        while (batch := ledger.next_unfinished()) is not None:
            status = session.get(f"{url}{ledger.status_urls[batch]}", timeout=10)
            # A batch's summary says done; a single product's status says stored.
            if not (status.ok and status.json().get("status") in ("done", "stored")):
                break
            with ledger.lock:
                ledger.done[batch] = time.monotonic()
        if ledger.all_posted() and ledger.all_searchable is None:
            found = session.get(f"{url}/api/search", params={"q": plan.run}, timeout=10)
            if found.ok and found.json().get("total", 0) >= plan.products:
                ledger.all_searchable = time.monotonic()
        stop.wait(interval)


def run(
    url: str,
    session_factory,
    plan: Plan,
    posters: int,
    rate: float = 0.0,
    timeout: float = 600.0,
    interval: float = 0.1,
    single: bool = False,
) -> Ledger:
    """Posts the plan with `posters` threads (at `rate` products a second when set) and watches
    until every product is done, or `timeout` seconds after the last POST. `single`: each
    product is one POST to /api/products/ (the plan's batches are of one)."""
    ledger = Ledger(plan=plan)
    queue = list(range(len(plan.batches)))
    begin = time.monotonic() + 0.5  # every poster started before the first slot
    offsets, total = [], 0
    for batch in plan.batches:
        offsets.append(total)
        total += len(batch)

    def schedule(batch: int) -> float | None:
        return begin + offsets[batch] / rate if rate > 0 else None

    threads = [
        threading.Thread(
            target=post_batches, args=(url, session_factory(), ledger, queue, schedule, single)
        )
        for _ in range(posters)
    ]
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch, args=(url, session_factory(), ledger, stop, interval), daemon=True
    )
    for thread in threads:
        thread.start()
    watcher.start()
    for thread in threads:
        thread.join()
    # A batch refused for good is never done: the figures say so without waiting for it.
    watcher.join(0 if ledger.failed else timeout)
    stop.set()
    watcher.join()
    return ledger
