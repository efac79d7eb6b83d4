"""`make verify` leaves the data alone: run against the hosts while the app serves (read-only)
traffic, every read-only check of every suite runs, and afterwards the catalogue's data are
byte for byte what they were: PostgreSQL's rows, MongoDB's documents, the queues' depths, the
backup files and the releases on the web hosts.

Each snapshot is a checksum taken on the host that holds the data, with the kit's own tools
(pg_dump, rabbitmqctl, the app's management shell, find and readlink). Molecule's stack
scenario runs it; it is marked destructive only to keep it out of the run it starts.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time

import pytest
import requests
from conftest import ROOT, SUPERUSER_PSQL, address_of, var_of, wait_for

from stackkit import site_client

pytestmark = pytest.mark.destructive

# Every document of the app's database, in a stable order.
MONGO_DUMP = (
    "import hashlib, json, pymongo; from django.conf import settings as s; "
    "c = pymongo.MongoClient(s.MONGODB_HOST, s.MONGODB_PORT, username=s.MONGODB_USER, "
    "password=s.MONGODB_PASSWORD, authSource=s.MONGODB_AUTH_SOURCE, "
    "**({'tls': True, 'tlsCAFile': s.TLS_CA_FILE} if s.MONGODB_TLS else {})); d = c[s.MONGODB_DB]; "
    "docs = {n: sorted(json.dumps(x, sort_keys=True, default=str) for x in d[n].find()) "
    "for n in sorted(d.list_collection_names())}; "
    "print(sum(map(len, docs.values())), "
    "hashlib.sha256(json.dumps(docs).encode()).hexdigest())"
)

PROBE_TABLES = " ".join(
    f"--exclude-table-data=public.{name}"
    for name in ("catalogue_queueprobe", "catalogue_queueprobe_id_seq")
)


def snapshot(inventory_hosts) -> dict[str, str]:
    """What must not change, one checksum (or small listing) per kind of data and host."""
    state: dict[str, str] = {}
    app = inventory_hosts("app")[0]
    database = var_of(app, "app_postgres_db", "app")
    for db in inventory_hosts("db"):
        # Without the \restrict and \unrestrict lines: their key is new in every dump. Without
        # the outbox's queue probes either: the beat writes one per queue every re-drive
        # interval, whatever else runs (they say when a queue was last drained, no catalogue data).
        state[f"rows@{db.backend.host}"] = db.check_output(
            f"runuser -u postgres -- pg_dump --data-only {shlex.quote(database)}"
            f" {PROBE_TABLES} | grep -Ev '^\\\\(un)?restrict ' | sha256sum"
        )
        state[f"products@{db.backend.host}"] = db.check_output(
            f"{SUPERUSER_PSQL} -At -d {shlex.quote(database)}"
            " -c 'SELECT count(*) FROM public.catalogue_product'"
        )
        backups = var_of(db, "postgresql_backup_dir", "postgresql")
        state[f"backups@{db.backend.host}"] = db.check_output(
            f"find {shlex.quote(backups)} -type f -printf '%P %s %T@\\n' | sort | sha256sum"
        )
    for broker in inventory_hosts("broker"):
        vhost = var_of(broker, "rabbitmq_vhost", "rabbitmq")
        state[f"queues@{broker.backend.host}"] = broker.check_output(
            f"rabbitmqctl -q list_queues -p {shlex.quote(vhost)} name messages"
            " --no-table-headers | sort"
        )
    state["documents"] = app.check_output(
        f"catalogue-manage shell --verbosity 0 -c {shlex.quote(MONGO_DUMP)}"
    )
    for web in inventory_hosts("web"):
        root = var_of(web, "app_root", "app")
        state[f"releases@{web.backend.host}"] = web.check_output(
            f"cd {shlex.quote(root)} && readlink current previous || true; "
            "find releases -maxdepth 1 -printf '%P %T@\\n' | sort | sha256sum"
        )
    return state


PENDING = "from catalogue.models import Submission; print(Submission.objects.pending().count())"
# The rows the outbox still owes a step, as the re-drive sees them (for a failure's message).
PENDING_ROWS = (
    "from django.utils import timezone; from catalogue.models import QueueProbe, Submission; "
    "print('now', timezone.now().isoformat()); "
    "[print(r) for r in Submission.objects.pending().order_by('accepted_at').values_list("
    "'pk', 'batch_id', 'sends', 'accepted_at', 'sent_at', 'claimed_at', 'redrive_at', "
    "'stored_at', 'history_at', 'indexed_at')[:20]]; "
    "[print('probe', r) for r in QueueProbe.objects.order_by('-ran_at').values_list("
    "'queue', 'sent_at', 'ran_at')[:4]]"
)

# Seconds until the latest re-drive deadline of the submissions still pending (0 when none is).
DUE = (
    "from django.db.models import Max; from django.utils import timezone; "
    "from catalogue.models import Submission; "
    "due = Submission.objects.pending().aggregate(m=Max('redrive_at'))['m']; "
    "print(max(0.0, (due - timezone.now()).total_seconds()) if due else 0.0)"
)
# The re-drive's own bounds: a beat interval after the deadline, and the time to do the work.
AFTER_DUE = 120
LONGEST_DUE = 1200


def pending_submissions(app) -> int:
    return int(app.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(PENDING)}"))


def pending_rows(app) -> str:
    return app.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(PENDING_ROWS)}")


class Traffic(threading.Thread):
    """Reads, as a visitor does, until stopped: the page and search (health and readiness
    answer the web hosts' loopback and monitoring only)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        paths = ("/", "/api/search?q=lamp")
        with site_client.session() as http:
            while not self.stop.is_set():
                for path in paths:
                    try:
                        self.statuses.append(http.get(self.base + path, timeout=10).status_code)
                    except requests.RequestException:
                        self.statuses.append(0)
                self.stop.wait(0.2)


def test_make_verify_under_traffic_leaves_every_byte_of_data_as_it_was(
    pytestconfig, inventory_hosts
):
    web = inventory_hosts("web")[0]
    base = f"https://{address_of(web)}:{var_of(web, 'nginx_tls_port', 'nginx')}"
    probe = site_client.session()
    assert wait_for(lambda: probe.get(f"{base}/api/search?q=lamp", timeout=5).ok, timeout=120)
    # Earlier suites may leave accepted products the outbox still owes a step (a re-drive comes
    # minutes later): wait until none is pending, so that what changes below is make verify's.
    app = inventory_hosts("app")[0]
    settled = wait_for(lambda: pending_submissions(app) == 0, timeout=600, interval=5)
    if not settled:
        # A submission sent again several times waits longer for its next send (the re-drive
        # backs off): wait out the latest deadline before calling anything stuck.
        due = float(app.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(DUE)}"))
        settled = due <= LONGEST_DUE and wait_for(
            lambda: pending_submissions(app) == 0, timeout=due + AFTER_DUE, interval=5
        )
    assert settled, f"the outbox still owes steps past its deadlines:\n{pending_rows(app)}"
    before = snapshot(inventory_hosts)

    inventory = pytestconfig.option.ansible_inventory
    traffic = Traffic(base)
    traffic.start()
    # make verify as an operator runs it: not the suites molecule picked, and none of the
    # variables of a make this run may itself be under (VERIFY_ARGS= there would reach it).
    skip = {"STACKKIT_TESTS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VERIFY_ARGS"}
    environment = {k: v for k, v in os.environ.items() if k not in skip}
    started = time.monotonic()
    try:
        verify = subprocess.run(
            ["make", "-C", str(ROOT), "verify", f"INVENTORY={inventory}"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    finally:
        traffic.stop.set()
        traffic.join(timeout=30)
    print(verify.stdout[-3000:])
    print(f"make verify took {time.monotonic() - started:.0f} s; {len(traffic.statuses)} reads")

    after = snapshot(inventory_hosts)
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"make verify changed data: {changed}"
    assert after.keys() == before.keys()
    assert traffic.statuses, "no traffic was served meanwhile"
    assert set(traffic.statuses) == {200}, f"reads failed meanwhile: {set(traffic.statuses)}"
    assert " passed" in verify.stdout, verify.stdout[-3000:]
    assert verify.returncode == 0, verify.stdout[-5000:] + verify.stderr[-2000:]
