"""The monitoring role, on the monitor hosts: Prometheus and Alertmanager on the private address,
every inventory host's exporter scraped and up, the tiers' exporters (PostgreSQL on the db
hosts, Redis on the cache hosts) scraped on every host of their group and logged in with the
least they need, every alert rule loaded, exporters reachable from the monitor hosts only, and
(on disposable hosts) alerts that fire when an exporter or a service stops and resolve when it
runs again."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
import yaml
from conftest import (
    PLAYBOOK_DIR,
    ROOT,
    address_of,
    assert_sandboxed,
    main_pid,
    record_alert_times,
    render,
    ssh_tunnel,
    sshd_forwards,
    tcp_reachable_from,
    var_of,
    wait_for,
)

from stackkit.alerts import ALERT_WITHIN, Alertmanager, get_json, prove

testinfra_hosts = ["ansible://monitor"]
ROLE = "monitoring"
SERVER_UNITS = ["prometheus", "prometheus-alertmanager"]
EXPORTER_UNIT = "prometheus-node-exporter"
# The tiers' exporters: (scrape job, unit, the role variables of its group and its port).
TIER_EXPORTERS = [
    ("postgresql", "prometheus-postgres-exporter", "monitoring_postgres_exporter"),
    ("redis", "prometheus-redis-exporter", "monitoring_redis_exporter"),
    ("elasticsearch", "prometheus-elasticsearch-exporter", "monitoring_elasticsearch_exporter"),
    ("nginx", "prometheus-nginx-exporter", "monitoring_nginx_exporter"),
]
# Every job scraped on the hosts of a group: the exporters above and RabbitMQ's own endpoint.
TIER_JOBS = [(job, variable) for job, _, variable in TIER_EXPORTERS] + [
    ("rabbitmq", "monitoring_rabbitmq")
]
BLACKBOX_UNIT = "prometheus-blackbox-exporter"
BIN = Path(sys.executable).parent
# Prometheus reads sizes in powers of 1024 and prints them as KiB, MiB, GiB...
SIZE_UNITS = {"B": 0, "KB": 1, "MB": 2, "GB": 3, "TB": 4, "PB": 5, "EB": 6}

# The body as text (the blackbox exporter's probe answers in Prometheus's text format).
_RAW_GET = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=15) as answer:
    print(answer.read().decode())
"""


def prometheus(host, v, path: str):
    answer = get_json(host, f"http://{address_of(host)}:{v('monitoring_prometheus_port')}{path}")
    assert answer["status"] == "success", answer
    return answer["data"]


def size_bytes(size: str) -> int:
    number = size.rstrip("BKMGTPEi")
    unit = size[len(number) :].replace("i", "")
    return int(number) * 1024 ** SIZE_UNITS[unit]


@pytest.mark.parametrize("unit", [*SERVER_UNITS, EXPORTER_UNIT])
def test_service_runs_as_prometheus_and_is_sandboxed(host, unit):
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled
    assert host.check_output(f"ps -o user= -p {main_pid(host, unit)}") == "prometheus"
    assert_sandboxed(host, unit, "data")


def test_every_host_runs_a_sandboxed_exporter(host, inventory_hosts):
    """Checked once per monitor host (`host`), so an inventory without one skips it."""
    for peer in inventory_hosts("all"):
        assert peer.service(EXPORTER_UNIT).is_running, peer.backend.host
        assert_sandboxed(peer, EXPORTER_UNIT, "data")


def test_listeners_bind_the_private_address_only(host, v):
    private = address_of(host)
    for name in ("prometheus_port", "alertmanager_port", "node_exporter_port"):
        port = v(f"monitoring_{name}")
        assert wait_for(lambda port=port: host.socket(f"tcp://{private}:{port}").is_listening)
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not host.socket(f"tcp://:::{port}").is_listening, port
    # No Alertmanager gossip port: its cluster listener is off.
    assert not host.socket("tcp://0.0.0.0:9094").is_listening
    assert not host.socket("tcp://:::9094").is_listening


def test_configuration_and_rules_pass_their_checkers(host):
    for command in (
        "promtool check config /etc/prometheus/prometheus.yml",
        "amtool check-config /etc/prometheus/alertmanager.yml",
    ):
        result = host.run(command)
        assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    for path in rule_files(host):
        assert host.file(path).content_string.startswith("#"), f"{path} has no managed header"
        result = host.run(f"promtool check rules {path}")
        assert result.rc == 0, f"{path}: {result.stdout}{result.stderr}"


def rule_files(host) -> list[str]:
    return host.check_output("ls /etc/prometheus/rules/*.yml").split()


def test_the_running_prometheus_keeps_the_configured_retention(host, v):
    flags = prometheus(host, v, "/api/v1/status/flags")
    assert flags["storage.tsdb.retention.time"] == v("monitoring_retention_time")
    assert size_bytes(flags["storage.tsdb.retention.size"]) == size_bytes(
        v("monitoring_retention_size")
    )
    assert flags["web.listen-address"] == f"{address_of(host)}:{v('monitoring_prometheus_port')}"


# Jobs scraped only on the hosts of their group where a variable turns their endpoint on.
SWITCHES = {"rabbitmq": "rabbitmq_prometheus_enabled"}


def tier_hosts(host, v, variable: str, job: str = "") -> list[str]:
    """The inventory hosts of the group a tier's exporter runs on (for a job with a switch,
    those where it is on)."""
    group = v(f"{variable}_group")
    names = sorted(render(host, f"groups['{group}'] | default([])")) if group else []
    if job in SWITCHES:
        switch = SWITCHES[job]
        names = [
            name
            for name in names
            if render(host, f"hostvars[{name!r}].{switch} | default(false) | bool")
        ]
    return names


def test_every_inventory_host_is_scraped_and_up(host, v):
    """The node job's targets are the inventory's hosts, each tier exporter's job's targets the
    hosts of its group (none named in the configuration by hand), and every target of every
    job answers."""
    wanted_nodes = set(v("monitoring_scrape_hosts"))
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    wanted = (
        {("node", name) for name in wanted_nodes}
        | {("prometheus", name) for name in monitors}
        | {("alertmanager", name) for name in monitors}
    )
    for job, variable in TIER_JOBS:
        wanted |= {(job, name) for name in tier_hosts(host, v, variable, job)}
    if v("monitoring_blackbox_enabled") and v("monitoring_blackbox_web_group"):
        probed = render(host, f"groups['{v('monitoring_blackbox_web_group')}'] | default([])")
        wanted |= {("blackbox", name) for name in probed}
    if v("monitoring_catalogue_group"):
        # The app's /metrics on each host of its group (the web hosts).
        apps = render(host, f"groups['{v('monitoring_catalogue_group')}'] | default([])")
        wanted |= {("catalogue", name) for name in apps}
    seen: dict[tuple[str, str], str] = {}

    def all_up() -> bool:
        seen.clear()
        for target in prometheus(host, v, "/api/v1/targets?state=active")["activeTargets"]:
            key = (target["labels"]["job"], target["labels"]["instance"])
            seen[key] = f"{target['health']} {target['lastError']}".strip()
        return set(seen) == wanted and all(state == "up" for state in seen.values())

    assert wait_for(all_up, timeout=60, interval=2), f"wanted {sorted(wanted)}, got {seen}"


def query(host, v, expression: str) -> dict[str, float]:
    """An instant query's values by instance."""
    data = prometheus(host, v, "/api/v1/query?" + urlencode({"query": expression}))
    return {item["metric"].get("instance", ""): float(item["value"][1]) for item in data["result"]}


def exporter_hosts(v, inventory_hosts, variable: str) -> tuple[list, int]:
    """The hosts of an exporter's group and its port; the test is skipped without hosts."""
    group = v(f"{variable}_group")
    hosts = inventory_hosts(group) if group else []
    if not hosts:
        pytest.skip(f"no host in {variable}_group")
    return hosts, v(f"{variable}_port")


@pytest.mark.parametrize(("job", "unit", "variable"), TIER_EXPORTERS, ids=lambda x: str(x))
def test_tier_exporters_run_sandboxed_on_the_private_address(
    host, v, inventory_hosts, job, unit, variable
):
    peers, port = exporter_hosts(v, inventory_hosts, variable)
    for peer in peers:
        assert peer.service(unit).is_running, peer.backend.host
        assert peer.service(unit).is_enabled, peer.backend.host
        assert peer.check_output(f"ps -o user= -p {main_pid(peer, unit)}") == "prometheus"
        assert_sandboxed(peer, unit, "data")
        listener = peer.socket(f"tcp://{address_of(peer)}:{port}")
        assert wait_for(lambda listener=listener: listener.is_listening), peer.backend.host
        assert not peer.socket(f"tcp://0.0.0.0:{port}").is_listening, peer.backend.host
        assert not peer.socket(f"tcp://:::{port}").is_listening, peer.backend.host


@pytest.mark.parametrize(
    ("job", "metric"),
    [
        ("postgresql", "pg_up"),
        ("redis", "redis_up"),
        ("elasticsearch", "elasticsearch_clusterinfo_up"),
        ("nginx", "nginx_up"),
    ],
)
def test_tier_exporters_log_in_to_their_service(host, v, job, metric):
    """The exporter reaches its service with its own account: its `up` metric is 1 on every host
    of the job."""
    variable = next(variable for name, _, variable in TIER_EXPORTERS if name == job)
    names = tier_hosts(host, v, variable)
    if not names:
        pytest.skip(f"no host runs the {job} exporter")
    seen: dict[str, float] = {}

    def logged_in() -> bool:
        seen.clear()
        seen.update(query(host, v, f'{metric}{{job="{job}"}}'))
        return set(seen) == set(names) and all(value == 1 for value in seen.values())

    assert wait_for(logged_in, timeout=60, interval=2), seen


def test_every_worker_publishes_its_figures_through_its_node_exporter(host, v, inventory_hosts):
    """Each Celery worker writes its own figures (the celery role's celery_metrics_dir) where
    its host's node exporter serves them: Prometheus reads the file of every worker of every
    worker host, written within the last minute, and the tasks the workers ran are counted by
    state and timed (beat sends the re-drive to the default queue every 30 s)."""
    workers = inventory_hosts("worker")
    if not workers:
        pytest.skip("no worker host")
    wanted: set[tuple[str, str]] = set()
    for worker in workers:
        directory = var_of(worker, "celery_metrics_dir", "celery")
        if not directory:
            pytest.skip(f"celery_metrics_dir is empty on {worker.backend.host}: nothing recorded")
        for unit in var_of(worker, "celery_workers", "celery"):
            wanted.add((worker.backend.host, f"catalogue-worker-{unit['name']}.prom"))
    ages: dict[tuple[str, str], float] = {}

    def fresh() -> bool:
        ages.clear()
        expression = urlencode({"query": "time() - node_textfile_mtime_seconds"})
        for item in prometheus(host, v, f"/api/v1/query?{expression}")["result"]:
            key = (item["metric"].get("instance", ""), Path(item["metric"]["file"]).name)
            ages[key] = float(item["value"][1])
        return all(ages.get(key, 1e9) < 60 for key in wanted)

    assert wait_for(fresh, timeout=90, interval=3), f"wanted {sorted(wanted)}, ages {ages}"
    done = 'sum(catalogue_celery_tasks_total{state="SUCCESS"})'
    timed = "sum(catalogue_celery_task_runtime_seconds_count)"
    assert wait_for(lambda: sum(query(host, v, done).values()) > 0, timeout=90, interval=3)
    assert sum(query(host, v, timed).values()) > 0
    names = "|".join(sorted({name for name, _ in wanted}))
    errors = query(host, v, f'node_textfile_scrape_error{{instance=~"{names}"}}')
    assert errors and not any(errors.values()), errors


def test_the_blackbox_exporter_probes_from_the_private_address(host, v):
    """On the monitor host, sandboxed and on the private address only; it probes: a TCP probe
    of Prometheus succeeds and one of a closed port fails."""
    if not v("monitoring_blackbox_enabled"):
        pytest.skip("monitoring_blackbox_enabled is false")
    assert host.service(BLACKBOX_UNIT).is_running
    assert host.check_output(f"ps -o user= -p {main_pid(host, BLACKBOX_UNIT)}") == "prometheus"
    assert_sandboxed(host, BLACKBOX_UNIT, "data")
    port = v("monitoring_blackbox_port")
    private = address_of(host)
    assert wait_for(lambda: host.socket(f"tcp://{private}:{port}").is_listening)
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening

    def probe(target: str) -> str:
        query = urlencode({"module": "tcp_connect", "target": target})
        return host.check_output(
            "python3 -c %s %s", _RAW_GET, f"http://{private}:{port}/probe?{query}"
        )

    assert "probe_success 1" in probe(f"{private}:{v('monitoring_prometheus_port')}")
    assert "probe_success 0" in probe(f"{private}:9")


def test_every_web_host_serves_a_verified_certificate_far_from_expiry(host, v):
    """The blackbox probes of the public URLs succeed (verified TLS, 2xx) and no certificate is
    within monitoring_certificate_expiry_days of its end."""
    group = v("monitoring_blackbox_web_group")
    names = sorted(render(host, f"groups['{group}'] | default([])")) if group else []
    if not v("monitoring_blackbox_enabled") or not names:
        pytest.skip("no web host is probed")
    seen: dict[str, float] = {}

    def probed() -> bool:
        seen.clear()
        seen.update(query(host, v, 'probe_success{job="blackbox"}'))
        return set(seen) == set(names) and all(value == 1 for value in seen.values())

    assert wait_for(probed, timeout=60, interval=2), seen
    days = v("monitoring_certificate_expiry_days")
    left = query(host, v, 'probe_ssl_earliest_cert_expiry{job="blackbox"} - time()')
    assert set(left) == set(names), left
    assert all(seconds > days * 86400 for seconds in left.values()), left


def test_postgres_exporter_role_has_pg_monitor_only_and_no_password(v, inventory_hosts):
    peers = inventory_hosts(v("monitoring_postgres_exporter_group") or "none")
    if not peers:
        pytest.skip("no db host")
    role = v("monitoring_postgres_exporter_role")
    for db in peers:
        sql = (
            "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication"
            " OR r.rolbypassrls, a.rolpassword IS NULL,"
            " (SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m"
            "  JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)"
            f" FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = '{role}'"
        )
        row = db.check_output(
            f"sudo -u postgres psql --no-psqlrc -XAtF' ' -d postgres -c {shlex.quote(sql)}"
        )
        assert row == "f t pg_monitor", f"{db.backend.host}: {row}"
        # Over TCP it has no way in: no password, and pg_hba names it for the socket only.
        assert db.run(f"psql -h 127.0.0.1 -U {role} -d postgres -w -c 'SELECT 1'").rc != 0


@pytest.mark.destructive
def test_a_password_set_on_the_exporters_role_by_hand_is_cleared(v, inventory_hosts, tmp_path):
    """The exporter's role has no password by design. One set behind Ansible's back is gone
    after the next run of the postgresql role (its configure tasks), so no password login can
    work; the host is left as it was either way."""
    peers = inventory_hosts(v("monitoring_postgres_exporter_group") or "none")
    if not peers:
        pytest.skip("no db host")
    db, role = peers[0], v("monitoring_postgres_exporter_role")

    def psql(sql: str) -> str:
        return db.check_output(
            f"sudo -u postgres psql --no-psqlrc -XAt -d postgres -c {shlex.quote(sql)}"
        )

    cleared = f"SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = '{role}'"
    psql(f"ALTER ROLE {role} PASSWORD 'stale-password-0123456789'")
    assert psql(cleared) == "f"
    # The role as the hosts were converged: with the kit's wiring, its own db play (every task
    # of the role, whatever the host's record); else the role alone, as the scenario's converge
    # has it. A play of the role alone would drop the wiring (TLS, listen addresses, pg_hba).
    kit = Path(PLAYBOOK_DIR or ROOT / "playbooks") / "db.yml"
    if kit.is_file():
        command = [str(kit), "--limit", db.backend.host, "-e", "stack_converge_all=true",
                   "--tags", "role::postgresql"]  # fmt: skip
    else:
        playbook = tmp_path / "postgresql.yml"
        playbook.write_text(
            f"- name: Converge the database\n  hosts: {db.backend.host}\n  become: true\n"
            "  roles: [postgresql]\n"
        )
        command = [str(playbook), "--tags", "postgresql_configure"]
    try:
        run = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", db.backend.ansible_inventory, *command],
            cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:]
        assert psql(cleared) == "t"
    finally:
        psql(f"ALTER ROLE {role} PASSWORD NULL")


def test_redis_exporter_user_reads_statistics_and_nothing_else(v, inventory_hosts):
    """With the credentials the exporter uses (read on the cache host from its settings file, so
    the password never leaves the host), INFO answers and every key, write and admin command is
    refused; the exporter's log shows no refusal of its own."""
    peers = inventory_hosts(v("monitoring_redis_exporter_group") or "none")
    if not peers:
        pytest.skip("no cache host")
    for cache in peers:
        port = var_of(cache, "monitoring_redis_port", ROLE)
        ca = var_of(cache, "monitoring_redis_tls_ca_certificate", ROLE)
        tls = f"--tls --cacert {ca}" if var_of(cache, "monitoring_redis_tls_enabled", ROLE) else ""

        def cli(*command: str, cache=cache, port=port, tls=tls):
            script = (
                ". /etc/default/prometheus-redis-exporter"
                f' && REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli {tls} -h 127.0.0.1 -p {port}'
                f' --user "$REDIS_USER" {shlex.join(command)}'
            )
            return cache.run(f"sh -c {shlex.quote(script)}")

        assert "redis_version" in cli("INFO", "server").stdout
        refused = [
            ("GET", "anything"),
            ("SET", "anything", "1"),
            ("KEYS", "*"),
            ("FLUSHALL",),
            ("CONFIG", "SET", "maxmemory", "1"),
            # @connection holds these too: the exporter may neither drop nor freeze clients.
            ("CLIENT", "KILL", "TYPE", "normal"),
            ("CLIENT", "PAUSE", "1"),
            ("CLIENT", "LIST"),
        ]
        for command in refused:
            answer = cli(*command)
            assert "NOPERM" in answer.stdout + answer.stderr, f"{command}: {answer.stdout}"
        log = cache.check_output("journalctl -u prometheus-redis-exporter --no-pager -o cat")
        assert "NOPERM" not in log, log[-2000:]


def test_every_rule_file_is_loaded_with_every_alert_healthy(host, v):
    on_disk: dict[str, set[str]] = {}
    for path in rule_files(host):
        groups = yaml.safe_load(host.file(path).content_string)["groups"]
        on_disk[path] = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {"TargetDown", "ServiceDown", "DiskAlmostFull"} <= set().union(*on_disk.values())
    loaded: dict[str, set[str]] = {}
    for group in prometheus(host, v, "/api/v1/rules?type=alert")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            loaded.setdefault(group["file"], set()).add(rule["name"])
    # A file whose groups hold no alert (the catalogue's, with no web host to scrape) has
    # nothing for Prometheus to list.
    assert loaded == {path: alerts for path, alerts in on_disk.items() if alerts}


def test_exporters_answer_the_monitor_hosts_only(host, v, inventory_hosts):
    """From the monitor host every exporter answers; from a host outside the monitor group,
    another host's exporter is dropped by its firewall."""
    port = v("monitoring_node_exporter_port")
    peers = inventory_hosts("all")
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    for peer in peers:
        assert tcp_reachable_from(host, address_of(peer), port), peer.backend.host
    outsiders = [peer for peer in peers if peer.backend.host not in monitors]
    if len(outsiders) < 2:
        pytest.skip("needs two hosts outside the monitor group")
    source, target = outsiders[0], outsiders[1]
    assert not tcp_reachable_from(source, address_of(target), port), (
        f"{source.backend.host} reaches {target.backend.host}'s exporter"
    )


@pytest.mark.parametrize(("job", "unit", "variable"), TIER_EXPORTERS, ids=lambda x: str(x))
def test_tier_exporters_answer_the_monitor_hosts_only(
    host, v, inventory_hosts, job, unit, variable
):
    targets, port = exporter_hosts(v, inventory_hosts, variable)
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    for target in targets:
        assert tcp_reachable_from(host, address_of(target), port), target.backend.host
        sources = [
            peer
            for peer in inventory_hosts("all")
            if peer.backend.host not in monitors and peer.backend.host != target.backend.host
        ]
        if sources:
            assert not tcp_reachable_from(sources[0], address_of(target), port), (
                f"{sources[0].backend.host} reaches {target.backend.host}'s {job} exporter"
            )


CONSOLE = "/consoles/catalogue.html"
CONSOLE_SECTIONS = (
    "Catalogue targets",
    "Requests per view",
    "Products",
    "Broker queues",
    "Workers",
    "Celery tasks",
    "Alerts firing",
)


def tunnel_opened(host, v) -> None:
    """Skips a check of the tunnel where the inventory opens none to Prometheus (the kit's
    wiring does on every monitor host: common_sshd_permit_open)."""
    prometheus = f"{v('monitoring_listen_address')}:{v('monitoring_prometheus_port')}"
    if prometheus not in render(host, "common_sshd_permit_open | default([])"):
        pytest.skip(f"common_sshd_permit_open does not open {prometheus} on this monitor host")


def test_sshd_forwards_to_prometheus_and_alertmanager_and_nothing_else(host, v):
    """The tunnel docs/monitoring.md gives the operator: the monitor host's sshd opens a
    forwarding channel to its Prometheus and Alertmanager, and refuses one to its node
    exporter (AllowTcpForwarding local, PermitOpen those two)."""
    tunnel_opened(host, v)
    address = v("monitoring_listen_address")
    assert sshd_forwards(host, address, v("monitoring_prometheus_port"))
    assert sshd_forwards(host, address, v("monitoring_alertmanager_port"))
    assert not sshd_forwards(host, address, v("monitoring_node_exporter_port"))


def test_the_catalogue_console_shows_each_web_host_through_the_tunnel(host, v):
    """/consoles/catalogue.html, through the SSH tunnel: every section, each web host's
    /metrics target by name (a query of the page that found nothing would show none), and no
    NaN."""
    tunnel_opened(host, v)
    with ssh_tunnel(host, v("monitoring_listen_address"), v("monitoring_prometheus_port")) as port:
        page = requests.get(f"http://127.0.0.1:{port}{CONSOLE}", timeout=30)
    assert page.status_code == 200, page.text[-2000:]
    for section in CONSOLE_SECTIONS:
        assert f"<h2>{section}</h2>" in page.text, section
    group = v("monitoring_catalogue_group")
    webs = render(host, f"groups['{group}'] | default([])") if group else []
    for web in webs:
        assert f"<td>{web}</td><td>up</td>" in page.text, web
    if not webs:
        assert "No web host is scraped" in page.text
    # A figure Prometheus could not compute (a quantile of a view without requests in the
    # window) shows as a dash, never as NaN.
    assert "NaN" not in page.text, page.text[-2000:]


def prove_alert(host, v, request, victim, unit: str, *label_sets: dict[str, str]) -> None:
    """Stop `unit` on `victim`: each alert with one of `label_sets` reaches Alertmanager within
    ALERT_WITHIN s; start it again: each is resolved within ALERT_WITHIN s. Records the times
    of each."""
    manager = Alertmanager(host, address_of(host), v("monitoring_alertmanager_port"))
    times = prove(manager, victim, unit, label_sets, ALERT_WITHIN)
    fault = f"{unit} stopped on {victim.backend.host}"
    for name, (fire, resolve) in times.items():
        key = fault if len(times) == 1 else f"{fault} ({name})"
        record_alert_times(request, key, name, fire, resolve)


def outside_monitor_group(host, v, inventory_hosts, pattern: str) -> list:
    monitors = set(render(host, f"groups['{v('monitoring_server_group')}']"))
    return [peer for peer in inventory_hosts(pattern) if peer.backend.host not in monitors]


@pytest.mark.destructive
def test_a_stopped_exporter_fires_target_down_and_resolves(host, v, inventory_hosts, request):
    victims = outside_monitor_group(host, v, inventory_hosts, "all")
    if not victims:
        pytest.skip("no host outside the monitor group to stop an exporter on")
    name = victims[0].backend.host
    labels = {"alertname": "TargetDown", "job": "node", "instance": name}
    prove_alert(host, v, request, victims[0], EXPORTER_UNIT, labels)


@pytest.mark.destructive
def test_a_stopped_redis_fires_service_down_and_resolves(host, v, inventory_hosts, request):
    # A monitor host's own exporter reports its Redis as well as any other host's does.
    victims = outside_monitor_group(host, v, inventory_hosts, "cache") or inventory_hosts("cache")
    if not victims:
        pytest.skip("no cache host to stop Redis on")
    name = victims[0].backend.host
    labels = [{"alertname": "ServiceDown", "instance": name, "name": "redis-server.service"}]
    # Where the Redis exporter runs, it sees the server gone as well.
    if name in tier_hosts(host, v, "monitoring_redis_exporter"):
        labels.append({"alertname": "RedisDown", "job": "redis", "instance": name})
    prove_alert(host, v, request, victims[0], "redis-server", *labels)
