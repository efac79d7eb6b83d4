"""The catalogue end to end, through nginx on a web host, against the services the other roles
run on their own hosts: what a user sees, and what lands in PostgreSQL, Elasticsearch, Redis,
MongoDB and RabbitMQ. Nothing here is mocked; images are served by a small HTTP server on the
controller so a test can hold an image fetch open or make it fail.

Read-only here: the health endpoints, the page, search answering from the index, and the
app's database role. Everything that adds products, stops or kills a service or reindexes is
marked destructive."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shlex
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import SUPERUSER_PSQL, address_of, internal_get, render, var_of, wait_for

from stackkit import site_client

testinfra_hosts = ["ansible://web"]
ROLE = "app"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(120)


# --- the site and the services behind it -------------------------------------------------------


@pytest.fixture(scope="module")
def site(host, var):
    port = var("nginx_tls_port", "nginx")
    # As a browser writes it (no :443), which is what Django's same-origin Referer check expects.
    base = f"https://{address_of(host)}" + ("" if int(port) == 443 else f":{port}")
    session = site_client.session(render(host, "app_api_tokens[0].token"))
    internal = f"https://127.0.0.1:{var('nginx_tls_port', 'nginx')}"
    site = Site(base, session, host, internal)
    assert wait_for(lambda: site.internal("/readyz").status_code == 200, 60)
    return site


class Internal:
    """An answer read on the web host itself."""

    def __init__(self, status_code: int, text: str) -> None:
        self.status_code = status_code
        self.text = text

    def json(self):
        return json.loads(self.text)


class Site:
    def __init__(self, base: str, session: requests.Session, host, internal: str) -> None:
        self.base = base
        self.http = session
        self.host = host
        self.internal_base = internal

    def internal(self, path: str) -> Internal:
        """GET an internal endpoint (/readyz, /api/stats) from the web host's loopback."""
        answer = internal_get(self.host, self.internal_base + path)
        return Internal(answer["status"], answer["body"])

    def get(self, path: str, **params) -> requests.Response:
        return self.http.get(self.base + path, params=params, timeout=10)

    def post(self, path: str, payload) -> requests.Response:
        return self.http.post(self.base + path, json=payload, timeout=10)

    def add(self, title: str, image_url: str, **extra) -> str:
        response = self.post("/api/products/", {"title": title, "image_url": image_url, **extra})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def stored(self, product_id: str, timeout: float = 60) -> dict:
        found: dict = {}

        def ready() -> bool:
            response = self.get(f"/api/products/{product_id}")
            found.update(response.json() if response.status_code == 200 else {})
            return response.status_code == 200

        assert wait_for(ready, timeout=timeout), f"product {product_id} never stored"
        return found

    def search_ids(self, q: str) -> list[str]:
        response = self.get("/api/search", q=q)
        return [hit["id"] for hit in response.json()["results"]] if response.ok else []

    def autocomplete_ids(self, q: str) -> list[str]:
        response = self.get("/api/autocomplete", q=q)
        return [hit["id"] for hit in response.json()["results"]] if response.ok else []


@pytest.fixture(scope="module")
def db(inventory_hosts, var):
    peer = inventory_hosts("db")[0]
    database = var("app_postgres_db", ROLE)

    def sql(query: str) -> list[list[str]]:
        out = peer.check_output(f"{SUPERUSER_PSQL} -d {database} -tAF '|' -c {shlex.quote(query)}")
        return [line.split("|") for line in out.splitlines() if line]

    return sql


@pytest.fixture(scope="module")
def queue_depths(inventory_hosts):
    peer = inventory_hosts("broker")[0]
    vhost = var_of(peer, "rabbitmq_vhost", "rabbitmq")

    def depths() -> dict[str, int]:
        out = peer.check_output(
            f"rabbitmqctl -q list_queues -p {vhost} name messages --no-table-headers"
        )
        return {name: int(n) for name, n in (line.split() for line in out.splitlines() if line)}

    return depths


@pytest.fixture(scope="module")
def manage(host):
    """Run Python in the live release on an app host, with the app's settings loaded."""

    def run(code: str) -> str:
        return host.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(code)}")

    return run


@pytest.fixture(scope="module")
def member(host):
    """An account for the page's form, made as the operator makes one (catalogue_user, the
    password on standard input), removed afterwards."""
    name = f"tester-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex + uuid.uuid4().hex
    host.check_output(
        f"printf '%s\\n' {password} | catalogue-manage catalogue_user --verbosity 0 {name}"
    )
    yield name, password
    host.run(f"catalogue-manage catalogue_user --verbosity 0 --remove {name}")


def csrf_token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def signed_in(site, member) -> requests.Session:
    """A browser-like session (no API token) signed in through the sign-in page."""
    name, password = member
    session = site_client.session()
    login = session.get(site.base + "/accounts/login/", timeout=10)
    assert login.status_code == 200
    answer = session.post(
        site.base + "/accounts/login/",
        data={
            "csrfmiddlewaretoken": csrf_token(login.text),
            "username": name,
            "password": password,
            "next": "/",
        },
        headers={"Referer": site.base + "/accounts/login/"},
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:300]
    return session


def submissions_titled(db, title: str) -> int:
    rows = db(
        "SELECT count(*) FROM public.catalogue_submission WHERE payload->>'title' = "
        + "'"
        + title.replace("'", "''")
        + "'"
    )
    return int(rows[0][0])


@pytest.fixture(scope="module")
def es(inventory_hosts, var):
    """Elasticsearch's REST API as an app host reaches it (the firewall admits no one else)."""
    peer = inventory_hosts("app")[0]
    url = var("app_elasticsearch_url", ROLE)
    # Through the search hosts' TLS proxy as the app goes: the internal CA, this host's own
    # certificate (root reads the key, as the app does through ssl-cert).
    tls = [
        var("app_tls_ca_certificate", ROLE),
        var("app_elasticsearch_client_certificate", ROLE),
        var("app_elasticsearch_client_key", ROLE),
    ]
    script = (
        "import ssl, sys, urllib.request as u; "
        "url, method, ca, cert, key = sys.argv[1:6]; "
        "ctx = ssl.create_default_context(cafile=ca) if url.startswith('https') else None; "
        "cert and ctx.load_cert_chain(cert, key); "
        "r = u.Request(url, method=method); "
        "print(u.urlopen(r, timeout=10, context=ctx).read().decode())"
    )
    quoted = " ".join(shlex.quote(str(word)) for word in tls)

    def call(path: str, method: str = "GET"):
        out = peer.check_output(f"python3 -c {shlex.quote(script)} {url}{path} {method} {quoted}")
        return json.loads(out)

    return call


@contextmanager
def stopped(hosts, unit: str):
    for peer in hosts:
        peer.check_output(f"systemctl stop {unit}")
    try:
        yield
    finally:
        for peer in hosts:
            peer.check_output(f"systemctl start {unit}")


# --- images served from the controller ----------------------------------------------------------


class Images(ThreadingHTTPServer):
    """/img/NAME answers at once; /hold/NAME waits until release(NAME); /broken/NAME is a 503."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("0.0.0.0", 0), ImageHandler)  # reached from the test hosts
        self.hits: Counter[str] = Counter()
        self.arrived: dict[str, threading.Event] = {}
        self.released: dict[str, threading.Event] = {}
        self.base = ""

    def events(self, name: str) -> tuple[threading.Event, threading.Event]:
        self.arrived.setdefault(name, threading.Event())
        self.released.setdefault(name, threading.Event())
        return self.arrived[name], self.released[name]


class ImageHandler(BaseHTTPRequestHandler):
    server: Images

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        kind, _, name = self.path.strip("/").partition("/")
        self.server.hits[self.path] += 1
        if kind == "broken":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "hold":
            arrived, released = self.server.events(name)
            arrived.set()
            released.wait(timeout=120)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        if body:
            self.wfile.write(PNG)


@pytest.fixture(scope="module")
def images(inventory_hosts):
    worker = inventory_hosts("worker")[0]
    route = worker.check_output("ip -4 route show default")
    controller = re.search(r"via (\S+)", route).group(1)
    server = Images()
    server.base = f"http://{controller}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    for event in server.released.values():
        event.set()
    server.shutdown()


def word() -> str:
    """A made-up word no other product has: consonant-vowel pairs, so it tokenises as one term."""
    return "".join(random.choice("bdfgklmnprstvz") + random.choice("aeiou") for _ in range(5))


def misspell(text: str) -> str:
    """Drop one letter from the middle, as a hurried typist does."""
    middle = len(text) // 2
    return text[:middle] + text[middle + 1 :]


# --- health ------------------------------------------------------------------------------------


def test_the_app_runs_as_a_database_role_that_owns_nothing(host, manage, var):
    """Serving traffic needs rows, not the schema: the app's processes connect as a role that
    owns no table and is no superuser; the owner's password (migrations) is not on the host."""
    out = manage(
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        '    c.execute("SELECT current_user, r.rolsuper, (SELECT count(*) FROM pg_class'
        ' WHERE relowner = r.oid) FROM pg_roles r WHERE r.rolname = current_user")\n'
        "    print(*c.fetchone())"
    )
    user, superuser, owned = out.split()
    assert user == var("app_postgres_user", ROLE)
    assert (superuser, owned) == ("False", "0")
    owner = var("app_postgres_owner_user", ROLE)
    if not owner:
        pytest.skip("this inventory migrates as the app's own role")
    assert user != owner
    environment = host.file(f"{var('app_config_dir', ROLE)}/catalogue.env").content_string
    assert var("app_postgres_owner_password", ROLE) not in environment
    assert f"POSTGRES_USER='{user}'" in environment


def test_liveness_and_readiness_check_every_dependency(site):
    assert site.internal("/healthz").json() == {"status": "ok"}
    ready = site.internal("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert set(checks) == {"postgresql", "redis", "rabbitmq", "elasticsearch", "mongodb"}
    assert all(check["ok"] for check in checks.values()), checks


# --- adding products ---------------------------------------------------------------------------


# A refused post writes nothing, unless the check fails: disposable hosts only.
@pytest.mark.destructive
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"image_url": "http://example.com/a.png"}, "title"),
        ({"title": "   ", "image_url": "http://example.com/a.png"}, "title"),
        ({"title": "x" * 201, "image_url": "http://example.com/a.png"}, "title"),
        ({"title": "Ftp image", "image_url": "ftp://example.com/a.png"}, "image_url"),
        ({"title": "Script", "image_url": "javascript:alert(1)"}, "image_url"),
        ({"title": "Long URL", "image_url": "http://example.com/" + "a" * 2040}, "image_url"),
    ],
    ids=["no title", "blank title", "title too long", "ftp url", "javascript url", "url too long"],
)
def test_bad_input_is_refused_with_field_errors(site, payload, field):
    response = site.post("/api/products/", payload)
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.destructive
def test_bad_input_stores_and_enqueues_nothing(site, db, queue_depths, inventory_hosts, images):
    """With the workers stopped, every message published stays in its queue: a refused post
    adds none and no row, while an accepted one adds exactly one message. Beat is stopped too:
    its outbox re-drive publishes to the same queue every 30 s. The slow workers are stopped as
    well, so that what an earlier check left in their queue does not drain meanwhile."""
    workers = inventory_hosts("worker")
    with (
        stopped(workers, "catalogue-worker-default"),
        stopped(workers, "catalogue-worker-slow"),
        stopped(workers[:1], "catalogue-beat"),
    ):
        rows = db("SELECT count(*) FROM public.catalogue_product")[0][0]
        before = queue_depths()
        for bad in ({"title": "", "image_url": "http://x.example/a.png"}, {"title": "t"}, [1, 2]):
            assert site.post("/api/products/", bad).status_code == 400
        batch = {"products": [{"title": "good", "image_url": f"{images.base}/img/a.png"}, {}]}
        assert site.post("/api/products/batch", batch).status_code == 400
        assert queue_depths() == before
        assert db("SELECT count(*) FROM public.catalogue_product")[0][0] == rows

        product_id = site.add(f"Control {word()}", f"{images.base}/img/control.png")
        expected = before.get("default", 0) + 1
        # Each look at the queues is a rabbitmqctl call, seconds long on a loaded host.
        assert wait_for(lambda: queue_depths().get("default") == expected, timeout=30)
    site.stored(product_id)


@pytest.mark.destructive
def test_post_is_accepted_before_the_slow_work_is_done(site, images):
    """The image server holds the fetch open: the POST has answered and the product is stored
    while the slow task still waits for it; once released, its result is kept."""
    name = f"{word()}.png"
    arrived, released = images.events(name)
    started = time.monotonic()
    payload = {"title": f"Held {word()}", "image_url": f"{images.base}/hold/{name}"}
    response = site.post("/api/products/", payload)
    latency = time.monotonic() - started
    assert response.status_code == 202
    body = response.json()
    assert body["status_url"] == f"/api/products/{body['id']}"
    site.stored(body["id"])
    assert arrived.wait(timeout=60), "the slow task never fetched the image"
    # The fetch is under way and held: the product is served meanwhile, its image pending.
    assert site.stored(body["id"])["image"]["status"] == "pending"
    print(f"POST latency with the slow task pending: {latency * 1000:.0f} ms")

    released.set()
    assert wait_for(lambda: site.stored(body["id"])["image"]["outcome"] == "ok", timeout=60)
    image = site.stored(body["id"])["image"]
    assert image["content_type"] == "image/png"
    assert image["size"] == len(PNG)


@pytest.mark.destructive
def test_a_broken_image_url_is_retried_a_capped_number_of_times(site, images, var, queue_depths):
    """A 503 forever: the slow task gives up after the configured retries, the product stays."""
    path = f"/broken/{word()}.png"
    product_id = site.add(f"Broken {word()}", images.base + path)
    attempts = int(var("app_image_fetch_max_retries", ROLE)) + 1

    def gave_up() -> bool:
        return site.stored(product_id)["image"]["status"] == "failed"

    assert wait_for(gave_up, timeout=120, interval=1)
    assert site.stored(product_id)["image"]["outcome"] == "http_error"
    # A retry scheduled after the last recorded attempt would be a message in the slow queue,
    # ready or held unacknowledged by a worker for its countdown: wait until there is none.
    assert wait_for(lambda: queue_depths().get("slow", 0) == 0, timeout=60)
    history = site.get(f"/api/products/{product_id}/history").json()["history"]
    fetches = [doc for doc in history if doc["kind"] == "image_fetch"]
    assert len(fetches) == attempts
    assert images.hits[path] == attempts


@pytest.mark.destructive
def test_a_redelivered_insert_creates_no_second_product(site, manage, db, images):
    product_id = site.add(f"Twice {word()}", f"{images.base}/img/twice.png")
    site.stored(product_id)
    again = {
        "id": product_id,
        "title": "Twice again",
        "image_url": f"{images.base}/img/x.png",
        "submitted_at": datetime.now(UTC).isoformat(),
    }
    result = manage(
        "from catalogue.tasks import insert_product; "
        f"print(insert_product.delay({again!r}).get(timeout=30)['created'])"
    )
    assert result == "False"
    rows = db(
        f"SELECT count(*), min(title) FROM public.catalogue_product WHERE id = '{product_id}'"
    )
    assert rows[0][0] == "1"
    assert rows[0][1].startswith("Twice ")


@pytest.mark.destructive
def test_a_batch_is_summarised_once_its_products_are_stored(site, images):
    tag = word()
    products = [
        {"title": f"Batch {tag} {n}", "image_url": f"{images.base}/img/b{n}.png"} for n in range(4)
    ]
    response = site.post("/api/products/batch", {"products": products})
    assert response.status_code == 202
    body = response.json()
    ids = [p["id"] for p in body["products"]]

    def summary() -> dict:
        answer = site.get(body["status_url"])
        return answer.json() if answer.status_code == 200 else {}

    assert wait_for(lambda: summary().get("status") == "done", timeout=60)
    done = summary()
    assert done["products"] == 4
    assert done["created"] == 4
    assert sorted(done["ids"]) == sorted(ids)


# --- search ------------------------------------------------------------------------------------


@pytest.mark.destructive
def test_a_product_is_found_by_autocomplete_and_by_a_misspelt_search(site, images):
    name = word()
    product_id = site.add(f"Python {name} cookbook", f"{images.base}/img/{name}.png")
    site.stored(product_id)
    assert wait_for(lambda: product_id in site.autocomplete_ids(name[:4]), timeout=60)
    assert site.autocomplete_ids(name[:4])[0] == product_id
    assert product_id in site.search_ids(misspell(name))
    answer = site.get("/api/search", q=f"pythn {misspell(name)}").json()
    assert answer["mode"] == "term"
    assert "python" in answer["suggestions"]
    assert answer["results"][0]["id"] == product_id


@pytest.mark.destructive
def test_the_title_weighs_more_than_the_description(site, images):
    name = word()
    in_title = site.add(f"{name} lamp", f"{images.base}/img/t.png", description="a lamp")
    in_text = site.add("A lamp", f"{images.base}/img/d.png", description=f"{name} inside")
    for product_id in (in_title, in_text):
        site.stored(product_id)
    assert wait_for(lambda: set(site.search_ids(name)) == {in_title, in_text}, timeout=60)
    assert site.search_ids(name) == [in_title, in_text]


def answered_from_cache(site, q: str) -> bool:
    """Ask twice: the first answer is kept once the index has settled (a new product makes each
    process answer uncached for a moment), the second then comes from the cache."""
    site.get("/api/autocomplete", q=q)
    return site.get("/api/autocomplete", q=q).json()["cached"]


@pytest.mark.destructive
def test_autocomplete_answers_are_cached_in_redis_compressed(site, inventory_hosts, var, images):
    name = word()
    product_id = site.add(f"Cached {name}", f"{images.base}/img/{name}.png")
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=60)
    first = site.get("/api/autocomplete", q=name[:6]).json()
    assert first["cached"] is False
    assert [hit["id"] for hit in first["results"]] == [product_id]
    assert wait_for(lambda: answered_from_cache(site, name[:6]), timeout=15)

    # django-redis names it <prefix>:<version>:<key>; the view's key is the index's generation
    # and a hash of the query.
    pattern = "catalogue:1:autocomplete:*:" + hashlib.sha256(name[:6].lower().encode()).hexdigest()
    cache = inventory_hosts("cache")[0]
    tls = (
        f"--tls --cacert {var_of(cache, 'redis_tls_ca_certificate', 'redis')} "
        if var_of(cache, "redis_tls_enabled", "redis")
        else ""
    )
    redis = (
        f"REDISCLI_AUTH={shlex.quote(var_of(cache, 'redis_default_password', 'redis'))} redis-cli "
        f"--no-auth-warning {tls}--user default -h {address_of(cache)} "
        f"-n {var('app_redis_cache_db', ROLE)}"
    )
    keys = cache.check_output(f"{redis} --scan --pattern {shlex.quote(pattern)}").split()
    assert keys
    for key in keys:
        ttl = int(cache.check_output(f"{redis} TTL {key}"))
        assert 0 < ttl <= int(var("app_autocomplete_ttl", ROLE))
        first_byte = cache.check_output(f"{redis} --raw GET {key} | head -c 1 | od -An -tx1")
        assert first_byte.strip() == "78"  # a zlib stream (msgpack inside)


@pytest.mark.destructive
def test_a_new_product_shows_up_in_a_hot_prefix_within_2_s_of_being_searchable(site, images):
    stem = word()
    prefix = stem[:6]
    first = site.add(f"{stem} lamp", f"{images.base}/img/{stem}.png")
    assert wait_for(lambda: first in site.autocomplete_ids(prefix), timeout=60)
    assert wait_for(lambda: answered_from_cache(site, prefix), timeout=15)  # hot: 30 s to live

    second = site.add(f"{stem}ish chair", f"{images.base}/img/{stem}ish.png")
    found_at: dict[str, float] = {}

    def found_by_both() -> bool:
        if "search" not in found_at and second in site.search_ids(f"{stem}ish"):
            found_at["search"] = time.monotonic()  # searchable: search is never cached
        if "autocomplete" not in found_at and second in site.autocomplete_ids(prefix):
            found_at["autocomplete"] = time.monotonic()
        return len(found_at) == 2

    assert wait_for(found_by_both, timeout=60, interval=0.1), found_at
    assert found_at["autocomplete"] <= found_at["search"] + 2
    assert set(site.autocomplete_ids(prefix)) == {first, second}


@pytest.mark.destructive
def test_stats_count_a_new_product_its_title_terms_and_its_image_outcome(site, db, images):
    """Before and after one product: today's count, its title's most frequent term and the
    `ok` image outcomes each grow by exactly one. Earlier tests' products may still be on their
    way to the index: the first figures are read once the stats agree with PostgreSQL's rows."""
    today = datetime.now(UTC).date().isoformat()

    def figures() -> tuple[int, dict[str, int], int]:
        stats = site.internal("/api/stats").json()
        per_day = {bucket["day"]: bucket["count"] for bucket in stats["products_per_day"]}
        terms = {bucket["term"]: bucket["count"] for bucket in stats["top_title_terms"]}
        return per_day.get(today, 0), terms, stats["image_fetch_outcomes"].get("ok", 0)

    def rows() -> tuple[int, int]:
        # Today as the index buckets it: UTC days.
        return tuple(
            int(n)
            for n in db(
                "SELECT count(*) FILTER (WHERE (created_at AT TIME ZONE 'UTC')::date"
                f" = '{today}'), count(*) FILTER (WHERE image_outcome = 'ok')"
                " FROM public.catalogue_product"
            )[0]
        )

    def settled() -> bool:
        day, _, ok = figures()
        return (day, ok) == rows()

    assert wait_for(settled, timeout=120), f"stats {figures()} never matched the rows {rows()}"
    day_before, terms_before, ok_before = figures()
    name = word()
    # The index's top term, if any, so the product moves a count the stats already show.
    term = max(terms_before, key=terms_before.get, default=f"stats{name}")
    product_id = site.add(f"{term} {name}", f"{images.base}/img/{name}.png")
    assert wait_for(lambda: site.stored(product_id)["image"]["outcome"] == "ok", timeout=60)
    expected = (day_before + 1, terms_before.get(term, 0) + 1, ok_before + 1)

    def counted() -> tuple[int, int, int]:
        day, terms, ok = figures()
        return day, terms.get(term, 0), ok

    wait_for(lambda: all(n >= e for n, e in zip(counted(), expected, strict=True)), timeout=60)
    assert counted() == expected, f"(today, {term!r}, ok) went from {expected} less one each"


# --- where the data lands ----------------------------------------------------------------------


@pytest.mark.destructive
def test_events_are_rows_in_monthly_partitions(site, db, images):
    name = word()
    product_id = site.add(f"Events {name}", f"{images.base}/img/{name}.png")
    site.stored(product_id)
    assert site.http.post(f"{site.base}/api/products/{product_id}/views", timeout=10).ok  # a view
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=60)

    def kinds() -> set[str]:
        query = f"SELECT kind FROM public.catalogue_event WHERE product_id = '{product_id}'"
        return {row[0] for row in db(query)}

    assert wait_for(lambda: {"created", "indexed", "viewed"} <= kinds(), timeout=30)
    month = datetime.now(UTC).strftime("%Y%m")
    tables = db(
        "SELECT DISTINCT tableoid::regclass FROM public.catalogue_event"
        f" WHERE product_id = '{product_id}'"
    )
    assert tables == [[f"public.catalogue_event_p{month}"]]
    assert db("SELECT count(*) FROM ONLY public.catalogue_event") == [["0"]]


@pytest.mark.destructive
def test_history_documents_are_kept_in_mongodb(site, manage, images):
    name = word()
    product_id = site.add(f"History {name}", f"{images.base}/img/{name}.png")
    assert wait_for(lambda: site.stored(product_id)["image"]["outcome"] == "ok", timeout=60)
    history = site.get(f"/api/products/{product_id}/history").json()["history"]
    assert [doc["kind"] for doc in history] == ["submission", "image_fetch"]
    assert history[0]["data"]["title"] == f"History {name}"
    raw = manage(
        # The app's own client: its address, credentials and TLS settings.
        "import json; from catalogue.documents import MongoStore; db = MongoStore().db; "
        f"print(json.dumps(sorted(d['_id'] for d in db.history.find("
        f"{{'product_id': '{product_id}'}}))))"
    )
    assert json.loads(raw) == [f"{product_id}:image_fetch:0", f"{product_id}:submission"]


# --- failures ----------------------------------------------------------------------------------


LOCK_HELD = (
    "SELECT count(*) FROM pg_locks WHERE relation = 'public.catalogue_product'::regclass"
    " AND granted AND mode = 'ShareRowExclusiveLock'"
)
# An insert waiting for the lock (Django sends parameters inline: the id is in the text).
INSERT_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    " AND query LIKE 'INSERT INTO \"catalogue_product\"%%' AND query LIKE '%%%s%%'"
)


@pytest.mark.destructive
def test_a_worker_killed_in_the_middle_of_an_insert_loses_no_product(site, db, inventory_hosts):
    """The products table is locked against writes, so the insert task blocks in PostgreSQL;
    then the default workers are killed outright. The message was not acknowledged, so a
    restarted worker does the insert again: the product is there, once."""
    db_host = inventory_hosts("db")[0]
    workers = inventory_hosts("worker")
    unit = "catalogue-worker-default"

    def pids() -> list[str]:
        return [w.check_output(f"systemctl show -p MainPID --value {unit}") for w in workers]

    # The lock is held by a session in the background, named so it can be ended below.
    lock = f"stackkit-test-lock-{uuid.uuid4().hex[:8]}"
    lock_session = f"application_name = '{lock}'"
    db_host.check_output(
        f"systemd-run --unit {lock} --setenv PGAPPNAME={lock} {SUPERUSER_PSQL} "
        "-d catalogue -c "
        + shlex.quote(
            "BEGIN; LOCK TABLE public.catalogue_product IN SHARE ROW EXCLUSIVE MODE;"
            " SELECT pg_sleep(120);"
        )
    )
    try:
        assert wait_for(lambda: db(LOCK_HELD)[0][0] == "1", timeout=20)
        product_id = site.add(f"Killed {word()}", "http://127.0.0.1/none.png")
        waiting = INSERT_WAITING % uuid.UUID(product_id).hex  # how psycopg writes a uuid
        assert wait_for(lambda: db(waiting)[0][0] == "1", 30), "the insert never started"
        before = pids()
        for worker in workers:
            worker.check_output(f"systemctl kill --signal=SIGKILL {unit}")
    finally:
        db(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {lock_session}")
    assert wait_for(lambda: all(p not in ("0", b) for p, b in zip(pids(), before, strict=True)), 30)
    site.stored(product_id, timeout=90)
    assert db(f"SELECT count(*) FROM public.catalogue_product WHERE id = '{product_id}'") == [["1"]]


@pytest.mark.destructive
def failed_indexing_attempts(workers, since: str) -> int:
    """Retries of the indexing task the workers logged since `since` (seconds since the epoch)."""
    return sum(
        int(
            worker.check_output(
                f"journalctl --quiet -o cat --since @{since} -u 'catalogue-worker-*'"
                " | grep -c 'index_product\\[.*\\] retry:' || true"
            )
        )
        for worker in workers
    )


@pytest.mark.destructive
def test_elasticsearch_stopped_and_started_again_loses_no_indexing(site, inventory_hosts):
    nodes = inventory_hosts("search")
    workers = inventory_hosts("worker")
    name = word()
    with stopped(nodes, "elasticsearch"):
        since = workers[0].check_output("date +%s")
        product_id = site.add(f"Outage {name}", "http://127.0.0.1/none.png")
        site.stored(product_id)
        ready = site.internal("/readyz")
        assert ready.status_code == 503
        assert not ready.json()["checks"]["elasticsearch"]["ok"]
        # Indexing fails and is retried while the node is down (not merely queued behind it).
        assert wait_for(lambda: failed_indexing_attempts(workers, since) >= 2, 60, interval=1)
    assert wait_for(lambda: site.internal("/readyz").status_code == 200, timeout=120, interval=2)
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=120, interval=2)


# --- search index maintenance ------------------------------------------------------------------


@pytest.mark.destructive
def test_reindex_swaps_the_alias_while_search_keeps_answering(site, host, var, es, images):
    name = word()
    product_id = site.add(f"Reindex {name}", f"{images.base}/img/{name}.png")
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=60)
    alias = var("app_elasticsearch_alias", ROLE)

    def targets() -> list[str]:
        return sorted(es(f"/_alias/{alias}"))

    before = targets()
    answers: list[bool] = []
    done = threading.Event()

    def keep_searching() -> None:
        while not done.is_set():
            answers.append(product_id in site.search_ids(name))

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        out = host.check_output("catalogue-manage reindex")
    finally:
        done.set()
        searcher.join()
    after = targets()
    assert len(after) == 1
    assert after != before
    assert after[0] in out
    assert answers
    assert all(answers), f"{answers.count(False)} of {len(answers)} searches missed the product"


@pytest.mark.destructive
def test_reconcile_puts_back_a_document_missing_from_the_index(site, manage, var, es, images):
    name = word()
    product_id = site.add(f"Reconcile {name}", f"{images.base}/img/{name}.png")
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=60)
    alias = var("app_elasticsearch_alias", ROLE)
    assert es(f"/{alias}/product/{product_id}?refresh=true", "DELETE")["result"] == "deleted"
    assert product_id not in site.search_ids(name)
    manage("from catalogue.tasks import reconcile_index as r; print(r.delay().get(timeout=60))")
    assert wait_for(lambda: product_id in site.search_ids(name), timeout=60)


# --- the page ----------------------------------------------------------------------------------


def test_search_answers_from_the_index_without_writing(site):
    """The read-only face of search (what `make verify` asks a production site): a query is
    answered from Elasticsearch with a list of results. Search is never cached and records
    nothing; autocomplete is left out here because it fills the Redis cache."""
    answer = site.get("/api/search", q="stackkit verify")
    assert answer.status_code == 200, answer.text[:200]
    body = answer.json()
    assert body["query"] == "stackkit verify"
    assert body["mode"] != "empty"  # it went to the index
    assert isinstance(body["results"], list)
    assert body["total"] >= len(body["results"])


def test_the_page_offers_autocomplete_and_to_anonymous_visitors_a_sign_in_link_not_the_form(
    site,
):
    page = site_client.session().get(site.base + "/", timeout=10)
    assert page.status_code == 200
    html = page.text
    assert 'name="image_url"' not in html
    assert 'href="/accounts/login/?next=/"' in html
    assert 'role="combobox"' in html
    script = re.search(r'src="([^"]*autocomplete\.js)"', html).group(1)
    assert site.get(script).status_code == 200


@pytest.mark.destructive
def test_an_anonymous_form_post_is_refused_and_writes_nothing(site, db, queue_depths):
    """With a valid CSRF token (from the sign-in page), so what refuses it is the view."""
    anonymous = site_client.session()
    token = csrf_token(anonymous.get(site.base + "/accounts/login/", timeout=10).text)
    title = f"Anonymous {word()}"
    before = queue_depths().get("default", 0)
    answer = anonymous.post(
        site.base + "/",
        data={"csrfmiddlewaretoken": token, "title": title, "image_url": "https://e.org/a.png"},
        headers={"Referer": site.base + "/"},
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 403, answer.status_code
    assert "Only signed-in users can add products" in answer.text
    assert submissions_titled(db, title) == 0
    assert db(f"SELECT count(*) FROM public.catalogue_product WHERE title = '{title}'") == [["0"]]
    assert queue_depths().get("default", 0) <= before


@pytest.mark.destructive
def test_the_form_refuses_bad_input_and_accepts_good_from_a_signed_in_user(
    site, db, member, images
):
    session = signed_in(site, member)
    form = session.get(site.base + "/", timeout=10)
    assert 'name="image_url"' in form.text
    token = csrf_token(form.text)
    headers = {"Referer": site.base + "/"}
    bad = session.post(
        site.base + "/",
        data={"csrfmiddlewaretoken": token, "title": "", "image_url": "ftp://x"},
        headers=headers,
        timeout=10,
    )
    assert bad.status_code == 400
    name = word()
    good = session.post(
        site.base + "/",
        data={
            "csrfmiddlewaretoken": token,
            "title": f"Form {name}",
            "image_url": f"{images.base}/img/f.png",
        },
        headers=headers,
        timeout=10,
        allow_redirects=False,
    )
    assert good.status_code in (302, 303)
    assert submissions_titled(db, f"Form {name}") == 1
    assert wait_for(lambda: f"Form {name}" in site.get("/").text, timeout=60)


@pytest.mark.destructive
def test_reading_a_product_changes_no_row_and_no_counter_and_the_beacon_counts_once(
    site, db, images
):
    """GETs and HEADs of a product, then one view beacon: once the beacon's count has landed
    (the task runs after any a read would have queued), popularity and the viewed events went
    up by exactly one, so the reads counted nothing. Two more beacons from the same client in
    the window count nothing."""
    name = word()
    product_id = site.add(f"Reads {name}", f"{images.base}/img/{name}.png")
    site.stored(product_id)

    def state() -> tuple[str, str]:
        [[popularity]] = db(
            f"SELECT popularity FROM public.catalogue_product WHERE id = '{product_id}'"
        )
        [[viewed]] = db(
            "SELECT count(*) FROM public.catalogue_event "
            f"WHERE product_id = '{product_id}' AND kind = 'viewed'"
        )
        return popularity, viewed

    before = state()
    assert before == ("0", "0")
    anonymous = site_client.session()
    for _ in range(5):
        assert anonymous.get(f"{site.base}/api/products/{product_id}", timeout=10).ok
        assert anonymous.head(f"{site.base}/api/products/{product_id}", timeout=10).ok
    assert state() == before
    beacons = [
        anonymous.post(f"{site.base}/api/products/{product_id}/views", timeout=10).json()
        for _ in range(3)
    ]
    assert [b["counted"] for b in beacons] == [True, False, False]
    assert wait_for(lambda: state() != before, timeout=30)
    assert state() == ("1", "1")


@pytest.mark.destructive
def test_the_owners_password_is_in_no_environment_the_apps_account_can_read(host, var):
    """Migrations log in as the schema owner with its password in their environment: they run
    as app_migrate_user, so a process of the app's own account (gunicorn, a worker) cannot read
    it from /proc. The probe is a management command run as a migration is, held open."""
    owner = var("app_postgres_owner_user", ROLE)
    if not owner:
        pytest.skip("migrations log in as the app's own role in this inventory")
    password = var("app_postgres_owner_password", ROLE)
    app_user, migrate_user = var("app_user", ROLE), var("app_migrate_user", ROLE)
    unit = f"stackkit-test-migrate-{uuid.uuid4().hex[:8]}"
    hold = "import time; time.sleep(60)"
    run = (
        f"printf '%s\\n' {shlex.quote(password)} | systemd-run --unit {unit} --pipe --quiet"
        f" --setenv POSTGRES_OWNER_USER={owner} catalogue-manage shell -c {shlex.quote(hold)}"
    )
    host.check_output(f"setsid -f sh -c {shlex.quote(run)} </dev/null >/dev/null 2>&1")
    try:

        def probe() -> int:
            pids = host.check_output(f"systemctl show -p MainPID --value {unit}")
            return int(pids or 0)

        assert wait_for(lambda: probe() > 0 and "manage.py" in host.check_output(
            f"cat /proc/{probe()}/cmdline | tr '\\0' ' '"), timeout=30)  # fmt: skip
        pid = probe()
        assert host.check_output(f"stat -c %U /proc/{pid}") == migrate_user
        # The probe is real: root finds the password in that environment.
        environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert f"POSTGRES_PASSWORD={password}" in environ.splitlines()
        attempt = host.run(f"runuser -u {app_user} -- cat /proc/{pid}/environ")
        assert attempt.rc != 0 and password not in attempt.stdout
    finally:
        host.run(f"systemctl stop {unit}")
