"""make bench-app's own logic: the wrk generator and what is read from wrk's output
(stackkit/bench/wrk.py), the ingest phases' bookkeeping (stackkit/bench/ingest.py), and the
report of their figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from stackkit.bench import ingest, wrk

# What wrk 4.1 prints for a run with the generator: its own summary, then done()'s line.
WRK_OUTPUT = """\
Running 20s test @ https://127.0.0.1:8443
  16 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.10ms   60.03ms 508.21ms   88.12%
    Req/Sec    19.93      6.21    40.00     71.05%
  6340 requests in 20.01s, 3.10MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    316.84
Transfer/sec:    158.53KB
STACKKIT-WRK {"p50_us": 48012, "p99_us": 508210, "max_us": 508210, "requests": 6340, \
"duration_us": 20010000, "connect_errors": 0, "read_errors": 0, "write_errors": 0, \
"status_errors": 3, "timeouts": 1}
"""


def test_wrk_figures_are_read_from_the_generators_line():
    figures = wrk.parse(WRK_OUTPUT)
    assert figures.requests == 6340
    assert figures.rps == pytest.approx(6340 / 20.01)
    assert (figures.p50, figures.p99, figures.max) == (48.012, 508.21, 508.21)
    assert figures.errors == 4  # three non-2xx answers and a timeout
    assert figures.rounds == 1.0


def test_a_search_on_elasticsearch_counts_searches_not_requests():
    line = {
        "p50_us": 900, "p99_us": 4000, "max_us": 9000, "requests": 3000, "duration_us": 10e6,
        "connect_errors": 0, "read_errors": 0, "write_errors": 0, "status_errors": 0,
        "timeouts": 0, "searches": 1500, "search_p50_us": 2000, "search_p99_us": 7000,
        "search_max_us": 12000,
    }  # fmt: skip
    figures = wrk.parse("Running 10s test\n" + wrk.MARK + json.dumps(line) + "\n")
    assert figures.rps == 150.0
    assert (figures.p50, figures.p99, figures.max) == (2.0, 7.0, 12.0)
    assert figures.rounds == 2.0


def test_wrk_output_without_the_generators_line_is_an_error():
    with pytest.raises(ValueError, match="STACKKIT-WRK"):
        wrk.parse(WRK_OUTPUT.rsplit("STACKKIT-WRK", 1)[0])


def test_the_bodies_are_the_apps_own_queries_with_the_words_filled_in():
    queries = wrk.app_queries()
    bodies = wrk.bodies()
    q = "keybaord monitr"
    assert bodies["autocomplete"].replace(wrk.Q, "kbd") == json.dumps(
        queries.autocomplete_query("kbd")
    )
    assert bodies["phrase"].replace(wrk.Q, q) == json.dumps(queries.phrase_query(q))
    assert bodies["term"].replace(wrk.Q, q) == json.dumps(queries.term_query(q, []))
    suggested = bodies["term_suggested"].replace(wrk.Q, q).replace(wrk.S, "keyboard monitor")
    assert suggested == json.dumps(queries.term_query(q, ["keyboard", "monitor"]))


def test_the_script_carries_its_endpoint_target_and_words():
    script = wrk.lua_script("search", "es", "/products/_search", ["keyboard", "monitor"])
    assert "ENDPOINT = [[search]]" in script
    assert "PATH = [[/products/_search]]" in script
    assert "WORDS = {[[keyboard]], [[monitor]]}" in script
    assert wrk.MARK in script
    with pytest.raises(ValueError):
        wrk.lua_script("page", "es", "/", [])


def test_a_lua_string_holds_any_text():
    assert wrk.lua_string("a]]b") == "[=[a]]b]=]"


def test_the_vocabulary_keeps_words_worth_misspelling():
    assert wrk.vocabulary(["bench", "tv", "4k", "keyboard", "a1b2c3", "monitor"]) == [
        "bench",
        "keyboard",
        "monitor",
    ]
    made_up = wrk.vocabulary([])
    assert len(made_up) == 50 and all(len(w) == 8 for w in made_up)


def test_the_wrk_command_has_one_thread_per_connection():
    command = wrk.command("/tmp/s.lua", "http://127.0.0.1:9200", 16, 20)
    assert "--threads=16" in command and "--connections=16" in command
    assert command[-1] == "http://127.0.0.1:9200"


class FakeElasticsearch(BaseHTTPRequestHandler):
    """A phrase round finds nothing and suggests a word per word; a term round finds 3."""

    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[dict]] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if "suggest" in body:
            entries = [
                {"text": w, "options": [{"text": f"{w}s", "score": 0.8}, {"text": "common"}]}
                for w in body["suggest"]["text"].split()
            ]
            answer = {"hits": {"total": 0, "hits": []}, "suggest": {"spelling": entries}}
        else:
            answer = {"hits": {"total": 3, "hits": []}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
def test_the_generator_chains_the_term_round_to_the_phrase_rounds_suggestions(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeElasticsearch)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeElasticsearch.bodies = []
    script = tmp_path / "search.lua"
    script.write_text(wrk.lua_script("search", "es", "/products/_search", ["keyboard"]))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = subprocess.run(
            wrk.command(str(script), url, 2, 1), capture_output=True, text=True, check=True
        )
    finally:
        server.shutdown()
    figures = wrk.parse(result.stdout)
    assert figures.errors == 0
    # Two rounds a search; a thread's last search may end with its phrase round.
    searches = round(figures.requests / figures.rounds)
    assert 0 <= figures.requests - 2 * searches <= 2
    queries = wrk.app_queries()
    phrases = [b for b in FakeElasticsearch.bodies if "suggest" in b]
    terms = [b for b in FakeElasticsearch.bodies if "suggest" not in b]
    assert phrases and terms
    for body in phrases:
        a, b = body["suggest"]["text"].split()
        assert len(a) == len(b) == len("keyboard") and "keyboard" not in (a, b)
        assert body == queries.phrase_query(f"{a} {b}")
    for body in terms:
        q = body["query"]["bool"]["should"][0]["multi_match"]["query"]
        a, b = q.split()
        suggestions = [f"{a}s", "common", f"{b}s"] if a != b else [f"{a}s", "common"]
        assert body == queries.term_query(q, suggestions)


# -- ingest --------------------------------------------------------------------------------------
def test_the_plan_puts_every_product_in_a_batch_and_spreads_the_sample():
    plan = ingest.plan("bakuto", products=105, batch_size=20, sample=25)
    assert plan.products == 105
    assert [len(b) for b in plan.batches] == [20, 20, 20, 20, 20, 5]
    titles = [t for b in plan.batches for t in b]
    assert len(set(titles)) == 105 and all(" bakuto " in t for t in titles)
    assert len(plan.sample) == 25 and plan.groups == [0, 1]
    assert sum(1 for g in plan.sample.values() if g == 0) == ingest.PAGE
    for title, group in plan.sample.items():
        assert title.endswith(f" {plan.group_word(group)}")
    first, last = min(plan.sample, key=titles.index), max(plan.sample, key=titles.index)
    assert titles.index(first) == 0 and titles.index(last) > 95
    assert plan.batch_of[titles[41]] == 2


def test_the_ledger_times_products_from_their_post_to_done_and_searchable():
    plan = ingest.plan("bakuto", products=40, batch_size=20, sample=2)
    ledger = ingest.Ledger(plan=plan)
    ledger.posting(0, 100.0)
    ledger.posting(1, 100.1)
    ledger.posted(1, 100.3, 429, None)  # the limiter: posted again
    ledger.posting(1, 100.5)
    ledger.posted(0, 100.2, 202, "/api/batches/a")
    ledger.posted(1, 100.6, 202, "/api/batches/b")
    assert ledger.all_posted() and ledger.next_unfinished() == 0
    first, second = sorted(plan.sample, key=plan.batch_of.get)
    ledger.seen([first, "a title of another run"], 100.9)
    ledger.seen([first, second], 101.5)  # the first stays timed when it was first seen
    ledger.done[0] = 101.0
    assert ledger.next_unfinished() == 1 and not ledger.complete()
    ledger.done[1] = 102.0
    ledger.all_searchable = 104.0
    assert ledger.complete()
    f = ledger.figures()
    assert f["accepted"] == 40 and f["retried_posts"] == 1 and f["failed_posts"] == {}
    assert f["accepted_per_s"] == pytest.approx(40 / 0.6, abs=0.1)
    assert (f["stored_s"], f["searchable_s"], f["end_to_end_s"]) == (2.0, 4.0, 4.0)
    assert f["end_to_end_per_s"] == 10.0
    # from each product's accepted POST: 0.9 s for the first, 1.0 s for the second
    assert (f["searchable_p50_s"], f["searchable_p95_s"]) == (0.9, 1.0)
    assert f["sample_found"] == 2


def test_the_singles_phase_posts_each_product_to_the_single_product_endpoint():
    """insert_product's path, not a batch of one (which takes insert_batch's)."""
    assert ingest.request(["Ingest bakuto 00001"], single=True) == (
        "/api/products/",
        {"title": "Ingest bakuto 00001", "image_url": ingest.IMAGE},
    )
    path, body = ingest.request(["a", "b"], single=False)
    assert path == "/api/products/batch" and len(body["products"]) == 2


def test_an_ingest_that_never_became_searchable_has_no_end_to_end_rate():
    plan = ingest.plan("bakuto", products=5, batch_size=5, sample=1)
    ledger = ingest.Ledger(plan=plan)
    ledger.posting(0, 1.0)
    ledger.posted(0, 1.1, 202, "/api/batches/a")
    ledger.done[0] = 2.0
    f = ledger.figures()
    assert f["stored_s"] == 1.0 and f["searchable_s"] is None
    assert f["end_to_end_per_s"] is None and f["searchable_p95_s"] is None


class FakeSite:
    """The batch API, batch status and search, answering as the app does: a batch is done and
    searchable on the second look at it."""

    def __init__(self) -> None:
        self.batches: dict[str, list[str]] = {}
        self.looks: dict[str, int] = {}
        self.lock = threading.Lock()

    def post(self, url: str, json: dict, timeout: float):
        with self.lock:
            batch = f"b{len(self.batches)}"
            self.batches[batch] = [p["title"] for p in json["products"]]
        return Answer(202, {"status_url": f"/api/batches/{batch}"})

    def get(self, url: str, params: dict | None = None, timeout: float = 0):
        with self.lock:
            if params is None:
                batch = url.rsplit("/", 1)[1]
                self.looks[batch] = self.looks.get(batch, 0) + 1
                done = self.looks[batch] > 1
                return Answer(200 if done else 202, {"status": "done" if done else "pending"})
            visible = [t for b, ts in self.batches.items() if self.looks.get(b, 0) > 1 for t in ts]
            hits = [t for t in visible if params["q"] in t.split()]
            return Answer(200, {"total": len(hits), "results": [{"title": t} for t in hits][:20]})


class Answer:
    def __init__(self, status: int, body: dict) -> None:
        self.status_code, self.body = status, body
        self.ok = status < 400

    def json(self) -> dict:
        return self.body


def test_an_ingest_run_waits_for_every_batch_and_the_whole_run_to_be_searchable():
    site = FakeSite()
    plan = ingest.plan("bakuto", products=95, batch_size=20, sample=10)
    ledger = ingest.run("https://site", lambda: site, plan, posters=3, interval=0.01)
    assert ledger.complete()
    f = ledger.figures()
    assert f["accepted"] == 95 and f["batches"] == 5
    assert f["sample_found"] == 10 and f["end_to_end_per_s"] > 0
    assert sorted(t for ts in site.batches.values() for t in ts) == sorted(plan.batch_of)


def test_the_report_shows_the_wrk_ratio_and_the_ingest(tmp_path):
    pytest.importorskip("matplotlib")
    from stackkit.bench import report  # noqa: PLC0415 - needs the bench extra

    side = {"requests": 10, "seconds": 20.0, "errors": 0, "p50": 1.9, "p99": 12.0, "max": 20.0,
            "rounds": 1.0, "load1": 1.5}  # fmt: skip
    endpoint = {"users": 32, "requests": 10, "non_2xx": 0, "rps": 5.0, "p50": 1.0, "p95": 2.0,
                "p99": 3.0, "max": 4.0, "history": [], "load1": 2.25}  # fmt: skip
    ingested = {"products": 3000, "batch_size": 20, "rate": 0, "accepted_per_s": 250.0,
                "post_p99_ms": 80.0, "stored_s": 30.0, "searchable_s": 31.0,
                "end_to_end_per_s": 96.8, "searchable_p50_s": 0.8, "searchable_p95_s": 1.4,
                "load1": 3.1}  # fmt: skip
    app_json = {
        "date": "d", "machine": "m", "label": "", "users": 32, "rate": 0, "duration": 20,
        "endpoints": {"search": endpoint},
        "wrk": {"connections": 16, "duration": 20, "search_host": "stack1", "endpoints": {
            "autocomplete": {"es": {**side, "rps": 7121.0}, "web": {**side, "rps": 317.0},
                             "ratio": 0.0445}}},
        "ingest": ingested,
        "ingest_paced": {**ingested, "rate": 40.0, "products": 600, "batch_size": 1},
    }  # fmt: skip
    (tmp_path / "app.json").write_text(json.dumps(app_json))
    assert report.main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| search | 5 | 1 | 2 | 3 | 4 | 0 | 2.25 |" in text
    assert "| autocomplete | 7121 | 1.9 | 12.0 | 317 | 1.9 | 12.0 | 4.5% | 1.5, 1.5 |" in text
    row = "| ingest | 3000 | 20 | flat out | 250.0 | 80.0 | 30.0 | 31.0 | 96.8 | 0.80 | 1.40 |"
    assert row in text
    assert "| ingest paced | 600 | 1 | 40.0 |" in text


def test_an_ingest_with_a_refused_batch_stops_without_waiting_for_it():
    class Refusing(FakeSite):
        def post(self, url: str, json: dict, timeout: float):
            return Answer(400, {"errors": {"products": ["At most 10 products per batch."]}})

    plan = ingest.plan("bakuto", products=30, batch_size=15, sample=2)
    ledger = ingest.run("https://site", Refusing, plan, posters=1, timeout=30, interval=0.01)
    f = ledger.figures()
    assert f["failed_posts"] == {"400": 2} and f["accepted"] == 0
    assert f["end_to_end_per_s"] is None
