"""The mongodb role, on the docs hosts: mongod never runs as root, runs under its own limits,
requires authentication and listens on the private address and loopback only.

In the molecule scenario and on the local hosts the server is SecantusDB (no registry here
carries mongod), installed by the role's secantusdb method and run by the same unit, user,
directories, limits, users and passwords that mongod gets. SecantusDB enforces roles and unique
indexes, so the checks below on authorisation and on the app's operations hold it to MongoDB's
behaviour; the app's MongoDB code is held to the operations exercised here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import (
    ROOT,
    address_of,
    assert_sandboxed,
    in_container,
    main_pid,
    process_limits,
    wait_for,
)

testinfra_hosts = ["ansible://docs"]
ROLE = "mongodb"


def process_uids(host, pid: int) -> list[int]:
    status = host.file(f"/proc/{pid}/status").content_string
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return [int(uid) for uid in line.split()[1:]]


def limit_value(value) -> str:
    """How /proc/PID/limits prints a systemd limit."""
    return "unlimited" if str(value) == "infinity" else str(value)


def server_problems(uids: list[int], limits: dict, wanted_nofile: int) -> list[str]:
    """The check this role exists for: a root-owned server, or one under too few open files."""
    problems = []
    if 0 in uids:
        problems.append(f"the server process runs as root (uids {uids})")
    soft = limits["Max open files"][0]
    if soft != "unlimited" and int(soft) < wanted_nofile:
        problems.append(f"its open-files limit {soft} is below the configured {wanted_nofile}")
    return problems


# What a client adds to its URI to reach a TLS-only server (set per test from the inventory).
_TLS_URI_OPTIONS = {"suffix": ""}


@pytest.fixture(autouse=True)
def _tls_uri_options(v):
    _TLS_URI_OPTIONS["suffix"] = (
        f"&tls=true&tlsCAFile={v('mongodb_tls_ca_certificate')}" if v("mongodb_tls_enabled") else ""
    )


def mongo(host, script: str, **env: str) -> dict:
    """Run a pymongo script on the host; it prints one JSON document."""
    if "URI" in env:
        env["URI"] += _TLS_URI_OPTIONS["suffix"]
    prefix = " ".join(f"{k}={shlex.quote(val)}" for k, val in env.items())
    program = "import json, os, pymongo\nfrom pymongo.errors import OperationFailure\n" + script
    result = host.run(f"{prefix} python3 -c {shlex.quote(program)}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_mongodb_account_is_a_system_user_that_cannot_log_in(host, v):
    user = host.user(v("mongodb_user"))
    assert user.exists
    assert 0 < user.uid < 1000
    assert user.group == v("mongodb_group")
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == v("mongodb_data_dir")
    assert not user.home.startswith("/home/")
    assert host.check_output(f"passwd -S {user.name}").split()[1] == "L"


def test_data_and_log_directories_belong_to_mongodb_and_are_closed_to_others(host, v):
    for path in (v("mongodb_data_dir"), v("mongodb_log_dir")):
        directory = host.file(path)
        assert directory.is_directory
        assert directory.user == v("mongodb_user")
        assert directory.group == v("mongodb_group")
        assert directory.mode & 0o027 == 0, f"{path} is {oct(directory.mode)}"


def test_mongod_conf_enables_authorization_and_binds_private_and_loopback(host, v):
    conf = host.file(v("mongodb_config_path"))
    assert conf.user == "root"
    assert conf.group == v("mongodb_group")
    assert conf.mode == 0o640
    settings = yaml.safe_load(conf.content_string)
    assert settings["security"]["authorization"] == "enabled"
    assert settings["net"]["bindIp"] == ",".join(v("mongodb_bind_addresses"))
    assert address_of(host) in settings["net"]["bindIp"].split(",")
    assert "127.0.0.1" in settings["net"]["bindIp"].split(",")
    assert settings["storage"]["dbPath"] == v("mongodb_data_dir")
    assert settings["systemLog"]["path"].startswith(v("mongodb_log_dir") + "/")


def test_unit_runs_the_server_as_mongodb_with_the_configured_limits(host, v):
    service = v("mongodb_service_name")
    assert host.service(service).is_enabled
    assert host.service(service).is_running
    shown = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show -p User -p Group -p LimitNOFILE -p LimitNPROC -p LimitMEMLOCK "
            f"-p TasksMax {service}"
        ).splitlines()
    )
    assert shown["User"] == v("mongodb_user")
    assert shown["Group"] == v("mongodb_group")
    assert shown["LimitNOFILE"] == str(v("mongodb_limit_nofile"))
    assert shown["LimitNPROC"] == str(v("mongodb_limit_nproc"))
    assert shown["LimitMEMLOCK"] == str(v("mongodb_limit_memlock"))
    assert shown["TasksMax"] == str(v("mongodb_tasks_max"))


def test_units_are_sandboxed(host, v):
    assert_sandboxed(host, v("mongodb_service_name"), "data")
    if host.file("/etc/systemd/system/disable-transparent-huge-pages.service").exists:
        assert_sandboxed(host, "disable-transparent-huge-pages", "data", running=False)


def test_server_process_is_owned_by_mongodb_never_root(host, v):
    pid = main_pid(host, v("mongodb_service_name"))
    uids = process_uids(host, pid)
    assert 0 not in uids
    assert set(uids) == {host.user(v("mongodb_user")).uid}
    assert host.process.get(pid=pid).user == v("mongodb_user")


def test_server_process_limits_are_the_configured_ones(host, v):
    limits = process_limits(host, main_pid(host, v("mongodb_service_name")))
    for name, variable in (
        ("Max open files", "mongodb_limit_nofile"),
        ("Max processes", "mongodb_limit_nproc"),
        ("Max locked memory", "mongodb_limit_memlock"),
    ):
        wanted = limit_value(v(variable))
        assert limits[name] == (wanted, wanted), f"{name}: {limits[name]} != {variable}={wanted}"


def test_server_is_not_root_and_has_at_least_the_configured_open_files(host, v):
    """The incident this role prevents: mongod as root, under root's low open-files limit."""
    pid = main_pid(host, v("mongodb_service_name"))
    problems = server_problems(
        process_uids(host, pid), process_limits(host, pid), int(v("mongodb_limit_nofile"))
    )
    assert problems == []


@pytest.mark.destructive
def test_that_check_fails_for_a_root_process_under_low_limits(host, v):
    """The check above is not vacuous: a process as root with 1024 open files fails it."""
    unit = "stackkit-root-probe"
    host.run(f"systemctl stop {unit}")
    host.check_output(
        f"systemd-run --unit {unit} --property LimitNOFILE=1024 --property RuntimeMaxSec=60 "
        "sleep 60"
    )
    try:
        pid = main_pid(host, unit)
        problems = server_problems(
            process_uids(host, pid), process_limits(host, pid), int(v("mongodb_limit_nofile"))
        )
        assert len(problems) == 2, problems
    finally:
        host.run(f"systemctl stop {unit}")


def test_pam_limits_cover_the_mongodb_user_outside_systemd(host, v):
    content = host.file("/etc/security/limits.d/mongodb.conf").content_string
    user = v("mongodb_user")
    memlock = v("mongodb_limit_memlock")
    memlock = "unlimited" if memlock == "infinity" else str(int(memlock) // 1024)
    nproc = limit_value(v("mongodb_limit_nproc"))
    for kind in ("soft", "hard"):
        assert f"{user} {kind} nofile {v('mongodb_limit_nofile')}" in content
        assert f"{user} {kind} nproc {nproc}" in content
        assert f"{user} {kind} memlock {memlock}" in content


def test_unit_template_carries_the_production_limits_by_default():
    """Rendered with the role's defaults alone, the unit asks for MongoDB's production limits
    (which this machine's ceilings would clamp, so the scenario runs with lower ones)."""
    role = ROOT / "roles" / ROLE
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "mongod.service"
        subprocess.run(
            [
                "ansible",
                "localhost",
                "-i",
                "localhost,",
                "-c",
                "local",
                "-m",
                "ansible.builtin.template",
                "-a",
                f"src={role}/templates/etc/systemd/system/mongod.service.j2 dest={dest}",
                "-e",
                f"@{role}/defaults/main.yml",
                "-e",
                f"@{role}/vars/main.yml",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
            ],
            check=True,
            capture_output=True,
        )
        unit = dest.read_text().splitlines()
    for line in (
        "User=mongodb",
        "Group=mongodb",
        "LimitNOFILE=64000",
        "LimitNPROC=64000",
        "LimitMEMLOCK=infinity",
        "TasksMax=infinity",
        "ExecStart=/usr/bin/mongod --config /etc/mongod.conf",
    ):
        assert line in unit


def test_test_server_is_the_pinned_secantusdb_installed_from_the_wheelhouse(host, v):
    if v("mongodb_install_method") != "secantusdb":
        pytest.skip("installed from MongoDB's APT repository")
    prefix = v("mongodb_secantusdb_prefix")
    shown = host.check_output(f"{prefix}/bin/python -m pip show secantusdb")
    assert f"Version: {v('mongodb_secantusdb_version')}" in shown.splitlines()
    command = host.file(f"/proc/{main_pid(host, v('mongodb_service_name'))}/cmdline")
    argv = command.content_string.split("\0")
    assert f"{prefix}/bin/secantusd-py" in argv
    assert "--auth" in argv
    proxy = f"{v('mongodb_service_name')}-proxy.socket"
    assert host.service(proxy).is_enabled
    assert host.service(proxy).is_running


def test_listens_on_the_private_address_and_loopback_only(host, v):
    port = v("mongodb_port")
    wanted = {f"{address}:{port}" for address in v("mongodb_bind_addresses")}

    def listening() -> set[str]:
        out = host.check_output(f"ss -Htln 'sport = :{port}'")
        return {line.split()[3] for line in out.splitlines()}

    assert wait_for(lambda: listening() == wanted, timeout=30), listening()
    assert f"{address_of(host)}:{port}" in wanted


@pytest.mark.destructive
def test_app_user_authenticates_inserts_and_reads_back(host, v):
    result = mongo(
        host,
        """
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
coll = client[os.environ["DB"]].stackkit_probe
marker = os.urandom(8).hex()
coll.insert_one({"marker": marker})
found = coll.find_one({"marker": marker})
print(json.dumps({"found": found is not None and found["marker"] == marker}))
""",
        URI=(
            f"mongodb://{v('mongodb_app_user')}:{v('mongodb_app_password')}@{address_of(host)}:"
            f"{v('mongodb_port')}/{v('mongodb_app_database')}?directConnection=true"
        ),
        DB=v("mongodb_app_database"),
    )
    assert result == {"found": True}


def test_unauthenticated_client_cannot_read(host, v):
    result = mongo(
        host,
        """
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
client.admin.command("ping")
try:
    client[os.environ["DB"]].stackkit_probe.find_one()
    print(json.dumps({"code": None}))
except OperationFailure as error:
    print(json.dumps({"code": error.code}))
""",
        URI=f"mongodb://{address_of(host)}:{v('mongodb_port')}/?directConnection=true",
        DB=v("mongodb_app_database"),
    )
    assert result == {"code": 13}  # Unauthorized


def test_wrong_password_is_refused(host, v):
    result = mongo(
        host,
        """
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
try:
    client[os.environ["DB"]].stackkit_probe.find_one()
    print(json.dumps({"code": None}))
except OperationFailure as error:
    print(json.dumps({"code": error.code}))
""",
        URI=(
            f"mongodb://{v('mongodb_app_user')}:not-the-password@127.0.0.1:{v('mongodb_port')}/"
            f"{v('mongodb_app_database')}?directConnection=true"
        ),
        DB=v("mongodb_app_database"),
    )
    assert result == {"code": 18}  # AuthenticationFailed


def test_admin_user_holds_its_roles_and_sees_the_app_user(host, v):
    result = mongo(
        host,
        """
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
admin = client.admin.command("usersInfo", os.environ["ADMIN"])["users"]
app = client[os.environ["DB"]].command("usersInfo", os.environ["APP"])["users"]
print(json.dumps({"admin": admin[0]["roles"], "app": app[0]["roles"]}))
""",
        URI=(
            f"mongodb://{v('mongodb_admin_user')}:{v('mongodb_admin_password')}@127.0.0.1:"
            f"{v('mongodb_port')}/admin?directConnection=true"
        ),
        ADMIN=v("mongodb_admin_user"),
        APP=v("mongodb_app_user"),
        DB=v("mongodb_app_database"),
    )
    assert result["admin"] == [{"role": r, "db": "admin"} for r in v("mongodb_admin_roles")]
    assert result["app"] == [
        {"role": r, "db": v("mongodb_app_database")} for r in v("mongodb_app_roles")
    ]


def test_the_admin_password_is_kept_in_no_file_on_the_host(host, v):
    """The role logs in with mongodb_admin_previous_password to change the admin password
    (roles/mongodb/tasks/users.yml) and keeps no copy: no file under /root, /home, /etc, /srv,
    /opt or /var/lib holds just the password. Files are compared by their SHA-256 on the
    controller, so the password is on no command line of the host (sudo logs those)."""
    assert not host.file("/root/.stackkit-mongodb-admin-password").exists
    secret = str(v("mongodb_admin_password")).encode()
    wanted = {hashlib.sha256(secret + end).hexdigest() for end in (b"", b"\n")}
    listing = host.check_output(
        "find /root /home /etc /srv /opt /var/lib -xdev -type f"
        f" -size -{len(secret) + 2}c -exec sha256sum {{}} + 2>/dev/null || true"
    )
    holding = [line.split(maxsplit=1)[1] for line in listing.splitlines() if line[:64] in wanted]
    assert holding == [], f"files hold the admin password: {holding}"


def test_transparent_huge_pages_are_disabled_where_the_kernel_allows(host, v):
    if not v("mongodb_disable_thp"):
        pytest.skip("mongodb_disable_thp is off in this inventory")
    unit = host.file("/etc/systemd/system/disable-transparent-huge-pages.service")
    if in_container(host):
        # THP belongs to the host's kernel; the role leaves it alone and says so.
        assert not unit.exists
        return
    assert host.service("disable-transparent-huge-pages").is_enabled
    enabled = host.file("/sys/kernel/mm/transparent_hugepage/enabled").content_string
    assert "[never]" in enabled


# The MongoDB operations the app's document store (app/catalogue/documents.py) may use: each is
# run below on the docs host's server with the app's credentials, so a new operation in the
# app fails test_the_app_uses_only_the_exercised_mongodb_operations until it is exercised here.
APP_OPERATIONS = {
    "create_index", "replace_one", "insert_many", "find", "sort", "find_one", "command",
}  # fmt: skip
# What MongoStore calls on values that are not the server's: a datetime's and a dict's.
NOT_OPERATIONS = {"isoformat", "get", "items"}


def test_the_app_uses_only_the_exercised_mongodb_operations():
    """Every method MongoStore calls is the store's own (_private), a datetime's or a dict's
    (NOT_OPERATIONS), or one of APP_OPERATIONS."""
    tree = ast.parse((ROOT / "app/catalogue/documents.py").read_text())
    store = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MongoStore")
    used = {
        node.func.attr
        for node in ast.walk(store)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and not node.func.attr.startswith("_")
    }
    assert used - NOT_OPERATIONS == APP_OPERATIONS


def app_uri(host, v) -> str:
    return (
        f"mongodb://{v('mongodb_app_user')}:{v('mongodb_app_password')}@{address_of(host)}:"
        f"{v('mongodb_port')}/{v('mongodb_app_database')}?directConnection=true"
    )


@pytest.mark.destructive
def test_the_apps_operations_behave_as_on_mongodb(host, v):
    """What documents.py relies on: an index on (product_id, at); a replace with upsert on a
    derived _id writes one document however often a task is redelivered; a batch's unordered
    insert_many writes the new documents and refuses only the redelivered one (11000); find
    with an _id-less projection sorted by time; find_one; ping."""
    result = mongo(
        host,
        """
import datetime
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000, tz_aware=True)
coll = client[os.environ["DB"]]["stackkit_probe_" + os.urandom(4).hex()]
name = coll.create_index([("product_id", 1), ("at", 1)])
product = os.urandom(6).hex()
now = datetime.datetime.now(datetime.UTC)
for attempt in (1, 2):
    coll.replace_one({"_id": product + ":submission"},
                     {"product_id": product, "kind": "submission", "at": now, "n": attempt},
                     upsert=True)
coll.replace_one({"_id": product + ":image_fetch:1"},
                 {"product_id": product, "kind": "image_fetch",
                  "at": now - datetime.timedelta(seconds=5)}, upsert=True)
from pymongo.errors import BulkWriteError
redelivered = [{"_id": product + ":submission", "product_id": product, "kind": "submission",
                "at": now},
               {"_id": product + ":batch", "product_id": product, "kind": "batch",
                "at": now + datetime.timedelta(seconds=5)}]
try:
    coll.insert_many(redelivered, ordered=False)
    bulk = []
except BulkWriteError as exc:
    bulk = [error.get("code") for error in exc.details.get("writeErrors", [])]
history = list(coll.find({"product_id": product}, {"_id": 0}).sort("at", 1))
one = coll.find_one({"_id": product + ":submission"}, {"_id": 0})
out = {
    "bulk": bulk,
    "index": name in coll.index_information(),
    "kinds": [doc["kind"] for doc in history],
    "ids": ["_id" in doc for doc in history],
    "count": coll.count_documents({"product_id": product}),
    "one": one["n"],
    "ping": client.admin.command("ping")["ok"],
}
coll.drop()
print(json.dumps(out))
""",
        URI=app_uri(host, v),
        DB=v("mongodb_app_database"),
    )
    assert result == {
        "bulk": [11000],
        "index": True,
        "kinds": ["image_fetch", "submission", "batch"],
        "ids": [False, False, False],
        "count": 3,
        "one": 2,
        "ping": 1.0,
    }


@pytest.mark.destructive
def test_duplicate_ids_and_unique_keys_are_refused(host, v):
    """The app's store counts on _id being unique (a redelivered event rewrites its document):
    a second insert of an _id, or of a key under a unique index, fails with 11000."""
    result = mongo(
        host,
        """
from pymongo.errors import DuplicateKeyError
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
coll = client[os.environ["DB"]]["stackkit_probe_" + os.urandom(4).hex()]
coll.create_index("sku", unique=True)
coll.insert_one({"_id": "p1", "sku": "a"})
codes = []
for document in ({"_id": "p1", "sku": "b"}, {"_id": "p2", "sku": "a"}):
    try:
        coll.insert_one(document)
        codes.append(None)
    except DuplicateKeyError as error:
        codes.append(error.code)
count = coll.count_documents({})
coll.drop()
print(json.dumps({"codes": codes, "count": count}))
""",
        URI=app_uri(host, v),
        DB=v("mongodb_app_database"),
    )
    assert result == {"codes": [11000, 11000], "count": 1}


@pytest.mark.destructive
def test_the_app_user_is_held_to_its_roles(host, v):
    """readWrite on its own database: no other database, no user administration."""
    result = mongo(
        host,
        """
client = pymongo.MongoClient(os.environ["URI"], serverSelectionTimeoutMS=5000)
codes = {}
attempts = {
    "other_database": lambda: client.stackkit_other.probe.insert_one({"a": 1}),
    "create_user": lambda: client[os.environ["DB"]].command(
        "createUser", "stackkit-probe", pwd=os.urandom(12).hex(), roles=[]),
    "list_databases": lambda: client.admin.command("listDatabases"),
}
for name, attempt in attempts.items():
    try:
        attempt()
        codes[name] = None
    except OperationFailure as error:
        codes[name] = error.code
print(json.dumps(codes))
""",
        URI=app_uri(host, v),
        DB=v("mongodb_app_database"),
    )
    assert result == {"other_database": 13, "create_user": 13, "list_databases": 13}
