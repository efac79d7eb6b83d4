"""The app's own metrics, seen from the monitor hosts: Prometheus scrapes gunicorn's /metrics on
every web host (HTTPS, its host's client certificate, the bearer token from the vault), which
answers no one without the token and is never proxied by nginx; the request figures per view and
the outbox's figures reach Prometheus, the app's alert rules are loaded, and (on disposable
hosts) an accepted product left overdue in the outbox fires CatalogueOutboxOverdue, which
resolves once the workers store it; where the rules' window is short enough (the multi
scenario's), PostgreSQL stopped under posts fires Catalogue5xxRatio and Elasticsearch frozen
under searches fires CatalogueLatencyP99, each resolving after the recovery."""

from __future__ import annotations

import json
import shlex
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests
from conftest import (
    SUPERUSER_PSQL,
    address_of,
    main_pid,
    record_alert_times,
    render,
    tcp_reachable_from,
    var_of,
    wait_for,
)

from stackkit import site_client
from stackkit.alerts import ALERT_WITHIN, Alertmanager, get_json, prove_fault, seconds

testinfra_hosts = ["ansible://monitor"]
ROLE = "monitoring"
TOKEN_FILE = "/etc/prometheus/catalogue-metrics.token"
RULES = {"CatalogueOutboxOverdue", "Catalogue5xxRatio", "CatalogueLatencyP99"}

# Run on the monitor host as root: GET a web host's /metrics as Prometheus does (the CA, the
# host's client certificate where given, the token file where given); prints status and body.
_METRICS_GET = r"""
import json, ssl, sys, urllib.error, urllib.request
url, ca, cert, key, token_file = sys.argv[1:6]
headers = {}
if token_file:
    headers["Authorization"] = "Bearer " + open(token_file).read().strip()
context = None
if url.startswith("https:"):
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # the chain is checked; the name is Prometheus's business
    if cert:
        context.load_cert_chain(cert, key)
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10,
                                context=context) as answer:
        status, body = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
print(json.dumps({"status": status, "body": body.decode()}))
"""


def web_names(host, v) -> list[str]:
    group = v("monitoring_catalogue_group")
    names = sorted(render(host, f"groups['{group}'] | default([])")) if group else []
    if not names:
        pytest.skip("no web host to scrape")
    return names


def prometheus(host, v, path: str):
    answer = get_json(host, f"http://{address_of(host)}:{v('monitoring_prometheus_port')}{path}")
    assert answer["status"] == "success", answer
    return answer["data"]


def query(host, v, expression: str) -> dict[str, float]:
    data = prometheus(host, v, "/api/v1/query?" + urlencode({"query": expression}))
    return {item["metric"].get("instance", ""): float(item["value"][1]) for item in data["result"]}


def metrics_get(host, v, web: str, token: bool) -> dict:
    scheme = "https" if v("monitoring_catalogue_tls_enabled") else "http"
    address = render(host, f"hostvars['{web}'].private_address")
    url = f"{scheme}://{address}:{v('monitoring_catalogue_port')}{v('monitoring_catalogue_path')}"
    args = [
        url,
        v("monitoring_catalogue_tls_ca_certificate"),
        v("monitoring_catalogue_tls_client_certificate"),
        v("monitoring_catalogue_tls_client_key"),
        TOKEN_FILE if token else "",
    ]
    command = "python3 -c %s " + " ".join(["%s"] * len(args))
    return json.loads(host.check_output(command, _METRICS_GET, *args))


def test_prometheus_reads_the_token_alone(host):
    token = host.file(TOKEN_FILE)
    assert token.user == "root"
    assert token.group == "prometheus"
    assert token.mode == 0o640
    assert len(token.content_string.strip()) >= 32


def test_every_web_host_is_scraped_as_catalogue_and_up(host, v):
    wanted = set(web_names(host, v))
    seen: dict[str, str] = {}

    def all_up() -> bool:
        seen.clear()
        for target in prometheus(host, v, "/api/v1/targets?state=active")["activeTargets"]:
            if target["labels"]["job"] == "catalogue":
                seen[target["labels"]["instance"]] = (
                    f"{target['health']} {target['lastError']} {target['scrapeUrl']}".strip()
                )
        return set(seen) == wanted and all(s.startswith("up") for s in seen.values())

    assert wait_for(all_up, timeout=60, interval=2), f"wanted {sorted(wanted)}, got {seen}"


def site_base(web) -> str:
    port = int(var_of(web, "nginx_tls_port", "nginx"))
    return f"https://{address_of(web)}" + ("" if port == 443 else f":{port}")


def test_the_metrics_answer_the_token_only(host, v, inventory_hosts):
    """With the token: the responses and latency of the page just asked for through nginx,
    and the outbox; without it: 401 and nothing."""
    http = site_client.session()
    for peer in inventory_hosts(v("monitoring_catalogue_group") or "none"):
        assert http.get(f"{site_base(peer)}/", timeout=10).status_code == 200
    for web in web_names(host, v):
        refused = metrics_get(host, v, web, token=False)
        assert refused["status"] == 401, (web, refused)
        assert "django_http" not in refused["body"]
        answered = metrics_get(host, v, web, token=True)
        assert answered["status"] == 200, (web, answered["status"], answered["body"][:300])
        for name in (
            "django_http_responses_total_by_status_view_method_total",
            "django_http_requests_latency_seconds_by_view_method_bucket",
            "catalogue_outbox_pending",
            "catalogue_outbox_oldest_overdue_seconds",
        ):
            assert name in answered["body"], (web, name)


def test_nginx_never_proxies_the_metrics(host, v, inventory_hosts):
    """Not from the internet, not even with the token: nginx answers 404 itself, where the
    same site proxies its page to the app."""
    token = host.file(TOKEN_FILE).content_string.strip()
    http = site_client.session()
    for web in inventory_hosts(v("monitoring_catalogue_group") or "none"):
        base = site_base(web)
        assert http.get(f"{base}/", timeout=10).status_code == 200, web.backend.host
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            for path in (v("monitoring_catalogue_path"), v("monitoring_catalogue_path") + "/"):
                answer = http.get(base + path, headers=headers, timeout=10)
                assert answer.status_code == 404, (web.backend.host, path, answer.status_code)
                assert "django_http" not in answer.text


def test_gunicorn_answers_the_monitor_hosts(host, v, inventory_hosts):
    for web in inventory_hosts(v("monitoring_catalogue_group") or "none"):
        assert tcp_reachable_from(host, address_of(web), v("monitoring_catalogue_port"))


def test_request_and_outbox_figures_reach_prometheus(host, v):
    """The blackbox probe of / gives every web host requests of the index view to count."""
    names = set(web_names(host, v))
    seen: dict[str, dict] = {}

    def figures() -> bool:
        seen["outbox"] = query(host, v, 'catalogue_outbox_up{job="catalogue"}')
        seen["latency"] = query(
            host,
            v,
            "sum by (instance) (django_http_requests_latency_seconds_by_view_method_count"
            '{job="catalogue", view="index"})',
        )
        seen["responses"] = query(
            host,
            v,
            "sum by (instance) (django_http_responses_total_by_status_view_method_total"
            '{job="catalogue", view="index", status="200"})',
        )
        return (
            set(seen["outbox"]) == names
            and all(value == 1 for value in seen["outbox"].values())
            and set(seen["latency"]) == names
            and all(value > 0 for value in seen["latency"].values())
            and set(seen["responses"]) == names
        )

    assert wait_for(figures, timeout=90, interval=3), seen


def test_the_catalogue_alert_rules_are_loaded(host, v):
    web_names(host, v)
    groups = prometheus(host, v, "/api/v1/rules")["groups"]
    health = {
        rule["name"]: rule["health"]
        for group in groups
        if group["name"] == "catalogue"
        for rule in group["rules"]
    }
    assert set(health) == RULES
    assert all(state != "err" for state in health.values()), health


def alertmanager(host, v) -> Alertmanager:
    """The monitor host's Alertmanager, and its Prometheus for queries."""
    return Alertmanager(
        host, address_of(host), v("monitoring_alertmanager_port"), v("monitoring_prometheus_port")
    )


def worker_units(worker) -> list[str]:
    out = worker.check_output(
        "systemctl list-units --all --plain --no-legend --type=service 'catalogue-worker-*'"
    )
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.mark.destructive
def test_an_overdue_submission_fires_catalogue_outbox_overdue_and_resolves(
    host, v, inventory_hosts, request
):
    """The fault the outbox exists for: nothing takes the work (every Celery worker stopped)
    while a product is accepted; its row is then set past its re-drive deadline by the
    threshold, as if that long had gone by (the deadline is minutes away). The alert must reach
    Alertmanager within ALERT_WITHIN s; once the workers run again they store the product, the
    row is done and the alert must resolve within ALERT_WITHIN s."""
    web = web_names(host, v)[0]
    workers = inventory_hosts("worker")
    db = inventory_hosts("db")
    if not workers or not db:
        pytest.skip("needs worker and db hosts")
    units = {worker: worker_units(worker) for worker in workers}
    assert all(units.values()), units
    app = inventory_hosts("app")[0]
    database = var_of(app, "app_postgres_db", "app")
    overdue = int(v("monitoring_catalogue_outbox_overdue_seconds")) + 60
    manager = alertmanager(host, v)
    session = site_client.session(render(host, "app_api_tokens[0].token"))
    web_host = inventory_hosts(web)[0]
    base = f"https://{address_of(web_host)}:{var_of(web_host, 'nginx_tls_port', 'nginx')}"
    title = f"Outbox overdue {time.time_ns()}"
    accepted: dict[str, str] = {}

    def sql(statement: str) -> str:
        return db[0].check_output(f"{SUPERUSER_PSQL} -d {database} -tA -c {shlex.quote(statement)}")

    def inject() -> None:
        for worker, names in units.items():
            worker.check_output("systemctl stop " + " ".join(map(shlex.quote, names)))
        answer = session.post(
            f"{base}/api/products/",
            json={"title": title, "image_url": "https://example.org/cover.png"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text[:300]
        accepted["id"] = answer.json()["id"]
        updated = sql(
            "UPDATE public.catalogue_submission"
            f" SET redrive_at = now() - interval '{overdue} seconds'"
            f" WHERE id = '{accepted['id']}' AND done_at IS NULL RETURNING id"
        )
        assert accepted["id"] in updated, updated

    def recover() -> None:
        for worker, names in units.items():
            worker.check_output("systemctl start " + " ".join(map(shlex.quote, names)))

    times = prove_fault(
        manager,
        "a submission overdue with every worker stopped",
        inject,
        recover,
        [{"alertname": "CatalogueOutboxOverdue"}],
        ALERT_WITHIN,
    )
    done = sql(
        f"SELECT done_at IS NOT NULL FROM public.catalogue_submission WHERE id = '{accepted['id']}'"
    )
    assert done.strip() == "t", f"the product is not done after the workers ran: {done}"
    fire, resolve = times["CatalogueOutboxOverdue"]
    record_alert_times(
        request, "submission overdue, workers stopped", "CatalogueOutboxOverdue", fire, resolve
    )


class Requests(threading.Thread):
    """A request every `interval` s until stopped, each on a thread of its own (so that slow
    answers do not thin the rate out), each answer's status kept in the order sent (0: none)."""

    def __init__(self, send, interval: float) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.interval = interval
        self.answers: list[Future] = []
        self.stop = threading.Event()

    def _status(self, number: int) -> int:
        try:
            return self.send(number).status_code
        except requests.RequestException:
            return 0

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            number = 0
            while not self.stop.is_set():
                number += 1
                self.answers.append(pool.submit(self._status, number))
                self.stop.wait(self.interval)

    def statuses(self) -> list[int]:
        return [answer.result() for answer in self.answers]


def short_window(v) -> tuple[int, float]:
    """The catalogue rules' window in seconds, and the interval between requests that puts
    twice their minimum in it; skips the proof where the window is too long for an alert to
    fire within ALERT_WITHIN s (it must hold for a window, after a window of the fault)."""
    window = seconds(v("monitoring_catalogue_window"))
    if 2 * window + 30 > ALERT_WITHIN:
        pytest.skip(f"monitoring_catalogue_window is {window} s: too long to prove within 90 s")
    return window, window / (2 * int(v("monitoring_catalogue_min_requests")))


@pytest.mark.destructive
def test_a_stopped_database_fires_catalogue_5xx_ratio_and_resolves(
    host, v, inventory_hosts, request
):
    """Products keep being posted while PostgreSQL is stopped: the products view answers 503
    (nothing can be recorded), Catalogue5xxRatio for that view must reach Alertmanager within
    ALERT_WITHIN s, and resolve within ALERT_WITHIN s of PostgreSQL's start as the posts are
    accepted again."""
    _, interval = short_window(v)
    db = inventory_hosts("db")
    if not db:
        pytest.skip("needs a db host")
    base = site_base(inventory_hosts(web_names(host, v)[0])[0])
    session = site_client.session(render(host, "app_api_tokens[0].token"))
    manager = alertmanager(host, v)
    marker = time.time_ns()

    def post(number: int):
        product = {"title": f"Refused lamp {marker} {number}", "image_url": "https://example.org/l"}
        return session.post(f"{base}/api/products/", json=product, timeout=15)

    writes = Requests(post, interval)
    writes.start()
    try:
        times = prove_fault(
            manager,
            "PostgreSQL stopped while products are posted",
            lambda: db[0].check_output("systemctl stop postgresql.service"),
            lambda: db[0].check_output("systemctl restart postgresql.service"),
            [{"alertname": "Catalogue5xxRatio", "view": "products"}],
            ALERT_WITHIN,
        )
    finally:
        writes.stop.set()
        writes.join(timeout=30)
    statuses = writes.statuses()
    assert 503 in statuses, statuses
    assert statuses[-1] == 202, statuses[-20:]
    fire, resolve = times["Catalogue5xxRatio"]
    record_alert_times(
        request, "PostgreSQL stopped, products posted", "Catalogue5xxRatio", fire, resolve
    )


@pytest.mark.destructive
def test_a_frozen_search_engine_fires_catalogue_latency_p99_and_resolves(
    host, v, inventory_hosts, request
):
    """Searches keep coming while Elasticsearch is frozen (SIGSTOP: it accepts connections and
    answers nothing): each search waits for the app's timeout, CatalogueLatencyP99 for the
    search view must reach Alertmanager within ALERT_WITHIN s, and resolve within ALERT_WITHIN s
    of SIGCONT."""
    _, interval = short_window(v)
    search = inventory_hosts("search")
    if not search:
        pytest.skip("needs a search host")
    base = site_base(inventory_hosts(web_names(host, v)[0])[0])
    session = site_client.session()
    manager = alertmanager(host, v)
    pid = main_pid(search[0], "elasticsearch")

    def find(number: int):
        return session.get(f"{base}/api/search", params={"q": f"lamp{number}"}, timeout=30)

    reads = Requests(find, interval)
    reads.start()
    try:
        times = prove_fault(
            manager,
            "Elasticsearch frozen while searches come",
            lambda: search[0].check_output(f"kill -STOP {pid}"),
            lambda: search[0].check_output(f"kill -CONT {pid}"),
            [{"alertname": "CatalogueLatencyP99", "view": "search"}],
            ALERT_WITHIN,
        )
    finally:
        search[0].run(f"kill -CONT {pid}")
        reads.stop.set()
        reads.join(timeout=60)
    statuses = reads.statuses()
    assert statuses and statuses[-1] == 200, statuses[-20:]
    fire, resolve = times["CatalogueLatencyP99"]
    record_alert_times(
        request, "Elasticsearch frozen, searches", "CatalogueLatencyP99", fire, resolve
    )
