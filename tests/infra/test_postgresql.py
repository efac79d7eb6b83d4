"""The postgresql role, on the db hosts: the distribution's server, tuned from memory,
reachable with SCRAM from the app hosts only, trigger and declarative partitioning with a
retention timer, and dumps that restore.

Read-only: the server, its settings, who may log in from where, the partitioning functions' rights,
the timers. Writing rows, making or dropping partitions and running the backup job are marked
destructive."""

from __future__ import annotations

import datetime
import re
import shlex
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import (
    ROOT,
    SUPERUSER_PSQL,
    address_of,
    assert_sandboxed,
    main_pid,
    relay_from,
    wait_for,
)

testinfra_hosts = ["ansible://db"]
ROLE = "postgresql"


def psql(host, sql: str, database: str = "postgres") -> str:
    """Run SQL as postgres over the unix socket, its path pinned to pg_catalog (so the names of
    the kit's and the app's objects carry their schema); unaligned, tuples-only output."""
    cmd = f"{SUPERUSER_PSQL} -At -v ON_ERROR_STOP=1 -d {{}} -c {{}}"
    return host.check_output(cmd.format(shlex.quote(database), shlex.quote(sql)))


def trigger_tables(v) -> list[dict]:
    return [t for t in v("postgresql_partitioned_tables") if t.get("mode", "trigger") == "trigger"]


def declarative_tables(v) -> list[dict]:
    return [t for t in v("postgresql_partitioned_tables") if t.get("mode") == "declarative"]


@pytest.fixture
def events(v):
    """The first trigger-partitioned table, with a row of values for its other columns."""
    tables = trigger_tables(v)
    if not tables:
        pytest.skip("no trigger-partitioned table in this inventory")
    return tables[0]


# A value for a column of each kind, for the columns an INSERT must fill.
FILLERS = (
    ("uuid", "gen_random_uuid()"),
    ("char", "'stackkit-test'"),
    ("text", "'stackkit-test'"),
    ("json", "'{}'"),
    ("bool", "false"),
    ("time", None),  # the row's timestamp
    ("int", "0"),
    ("numeric", "0"),
    ("double", "0"),
    ("real", "0"),
)


def insert_sql(table: dict, timestamp: str) -> str:
    """An INSERT of one row at TIMESTAMP; every other column that must have a value (NOT NULL
    or PRIMARY KEY, no DEFAULT, not serial) gets one of its type."""
    names, values = [table["column"]], [f"'{timestamp}'"]
    for column in table["columns"]:
        ctype = column["type"].lower()
        required = "not null" in ctype or "primary key" in ctype
        if column["name"] == table["column"] or not required or "default" in ctype:
            continue
        if "serial" in ctype:
            continue
        filler = next((value for kind, value in FILLERS if kind in ctype), "''")
        names.append(column["name"])
        values.append(filler or f"'{timestamp}'")
    schema = table.get("schema", "public")
    return (
        f"INSERT INTO {schema}.{table['table']} ({', '.join(names)}) VALUES ({', '.join(values)})"
    )


def max_ahead(table: dict) -> int:
    """How many ranges after the current one a child may start (the role's look-ahead cap)."""
    premake = int(table.get("premake", 3))
    return max(int(table.get("max_ahead", premake + 1)), premake)


def ahead(table: dict, n: int) -> tuple[str, str]:
    """The suffix of the child n ranges after the current one (UTC) and a timestamp inside
    its range. Tests write future rows there, inside the cap: the app writes rows at now, so
    these children hold only the tests' rows, and the cap refuses anything further out."""
    now = datetime.datetime.now(datetime.UTC)
    if table["interval"] == "month":
        months = now.year * 12 + now.month - 1 + n
        start = datetime.date(months // 12, months % 12 + 1, 1)
        return start.strftime("%Y%m"), start.strftime("%Y-%m-15 12:00:00+00")
    start = now.date() + datetime.timedelta(days=n)
    return start.strftime("%Y%m%d"), start.strftime("%Y-%m-%d 12:00:00+00")


def children(host, table: dict) -> list[str]:
    schema = table.get("schema", "public")
    return psql(
        host,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        f" WHERE i.inhparent = '{schema}.{table['table']}'::regclass ORDER BY 1",
        table["database"],
    ).split()


def drop_children(host, table: dict, suffixes: list[str]) -> None:
    schema = table.get("schema", "public")
    for suffix in suffixes:
        psql(host, f"DROP TABLE IF EXISTS {schema}.{table['table']}_p{suffix}", table["database"])


def test_server_is_the_distribution_version_and_running(host):
    versions = yaml.safe_load((ROOT / "roles" / ROLE / "vars" / "main.yml").read_text())[
        "__postgresql_distribution_versions"
    ]
    distro = host.system_info.distribution.capitalize()
    major = host.system_info.release.split(".")[0]
    expected = versions[distro][major]
    assert host.package(f"postgresql-{expected}").is_installed
    assert host.service(f"postgresql@{expected}-main").is_running
    assert host.service(f"postgresql@{expected}-main").is_enabled
    assert psql(host, "SHOW server_version_num")[: len(expected)] == expected


def test_tuning_is_derived_from_memory_and_settings_override_it(host, v):
    memory = v("postgresql_memory_mb")
    if not str(memory).isdigit():
        memory = int(host.check_output("awk '/^MemTotal/ {print $2}' /proc/meminfo")) // 1024
    memory = int(memory)
    assert psql(host, "SHOW shared_buffers") == f"{max(128, int(memory * 0.25))}MB"
    assert psql(host, "SHOW effective_cache_size") == f"{max(256, int(memory * 0.75))}MB"
    assert psql(host, "SHOW max_connections") == str(v("postgresql_max_connections"))
    assert psql(host, "SHOW password_encryption") == "scram-sha-256"
    assert psql(host, "SHOW constraint_exclusion") == "partition"
    work_mem_kb = int(psql(host, "SELECT setting FROM pg_settings WHERE name = 'work_mem'"))
    assert work_mem_kb >= 4096
    assert work_mem_kb * v("postgresql_max_connections") * 3 <= memory * 1024
    for key, value in v("postgresql_settings").items():
        assert psql(host, f"SHOW {key}") == str(value), key


def test_listens_on_the_private_address_and_loopback_only(host, v):
    port = v("postgresql_port")
    assert wait_for(lambda: host.socket(f"tcp://127.0.0.1:{port}").is_listening)
    assert host.socket(f"tcp://{address_of(host)}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def _login_from(
    peer, address: str, port: int, user: str, database: str, password: str, tls: bool = False
):
    """Log in as `peer` would (the app hosts carry no psql): the client runs on the controller
    and its connection leaves from the peer. (current_user, None) or (None, the error). Over
    TLS when the server takes app logins over TLS only (test_tls checks the chain and name)."""
    with relay_from(peer, address, port) as local:
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=local,
                user=user,
                dbname=database,
                password=password,
                connect_timeout=10,
                sslmode="require" if tls else "prefer",
            ) as connection:
                return connection.execute("SELECT current_user").fetchone()[0], None
        except psycopg.OperationalError as error:
            return None, str(error)


def _login(peer, address: str, port: int, user: str, database: str, password: str):
    """psql on a host the postgresql role installed it on."""
    command = "PGPASSWORD={} PGCONNECT_TIMEOUT=5 psql -X -At -h {} -p {} -U {} -d {} -c {}"
    return peer.run(
        command.format(
            shlex.quote(password),
            address,
            port,
            shlex.quote(user),
            shlex.quote(database),
            shlex.quote("SELECT current_user, inet_server_addr()"),
        )
    )


@pytest.fixture
def app_login(v):
    databases = v("postgresql_databases")
    if not databases:
        pytest.skip("no database for the app in this inventory")
    database = databases[0]
    password = {u["name"]: u["password"] for u in v("postgresql_users")}[database["owner"]]
    return database["name"], database["owner"], password


@pytest.fixture
def runtime_login(v):
    """The first read-write role of the first database: the role the app runs as."""
    databases = [d for d in v("postgresql_databases") if d.get("readwrite_users")]
    if not databases:
        pytest.skip("no database with a read-write role in this inventory")
    database = databases[0]
    user = database["readwrite_users"][0]
    password = {u["name"]: u["password"] for u in v("postgresql_users")}[user]
    return database["name"], user, password


def as_role(host, v, login, sql: str):
    """Run SQL on the db host over TCP as a role that logs in with its password."""
    database, user, password = login
    command = (
        "PGPASSWORD={} psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {} -U {} -d {} -c {}".format(
            shlex.quote(password),
            v("postgresql_port"),
            shlex.quote(user),
            shlex.quote(database),
            shlex.quote(sql),
        )
    )
    return host.run(command)


def test_app_host_logs_in_with_scram(host, v, inventory_hosts, app_login):
    database, user, password = app_login
    apps = [p for p in inventory_hosts("app") if address_of(p) in v("postgresql_app_sources")]
    assert apps, "no app host among postgresql_app_sources"
    logged_in, error = _login_from(
        apps[0],
        address_of(host),
        v("postgresql_port"),
        user,
        database,
        password,
        v("postgresql_tls_enabled"),
    )
    assert logged_in == user, error
    secret = psql(host, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert secret.startswith("SCRAM-SHA-256$")


def test_app_host_with_a_wrong_password_is_refused(host, v, inventory_hosts, app_login):
    database, user, _ = app_login
    app = inventory_hosts("app")[0]
    logged_in, error = _login_from(
        app,
        address_of(host),
        v("postgresql_port"),
        user,
        database,
        "not-the-password",
        v("postgresql_tls_enabled"),
    )
    assert logged_in is None
    assert "password authentication failed" in error


def test_non_app_address_is_refused_even_with_the_password(host, v, app_login):
    """The db host's own private address is not an app source: pg_hba.conf has no line for it."""
    database, user, password = app_login
    address = address_of(host)
    if address in v("postgresql_app_sources"):
        pytest.skip("this db host is an app host too (single-host topology)")
    result = _login(host, address, v("postgresql_port"), user, database, password)
    assert result.rc != 0
    # No line admits it; with TLS on, a plaintext retry meets the hostnossl reject line.
    assert (
        f'no pg_hba.conf entry for host "{address}"' in result.stderr
        or f'pg_hba.conf rejects connection for host "{address}"' in result.stderr
    ), result.stderr


def test_no_security_definer_function_of_a_superuser_and_none_for_public(host, v):
    """What runs with another role's rights runs with the rights of a table owner, never of a
    superuser; creating children and maintenance are not granted to PUBLIC."""
    for database in {t["database"] for t in v("postgresql_partitioned_tables")}:
        definers = psql(
            host,
            "SELECT p.oid::regprocedure || ' owned by ' || r.rolname FROM pg_proc p"
            " JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.prosecdef AND r.rolsuper AND p.pronamespace <> 'pg_catalog'::regnamespace"
            " AND p.pronamespace <> 'information_schema'::regnamespace",
            database,
        )
        assert definers == "", f"superuser's SECURITY DEFINER functions in {database}: {definers}"
        public = psql(
            host,
            "SELECT p.oid::regprocedure FROM pg_proc p, aclexplode(coalesce(p.proacl,"
            " acldefault('f', p.proowner))) a WHERE p.pronamespace = 'partitions'::regnamespace"
            " AND a.grantee = 0 AND p.proname <> 'child_name' ORDER BY 1",
            database,
        )
        assert public == "", f"PUBLIC may execute in {database}: {public}"


def test_superuser_sessions_resolve_names_in_pg_catalog_only(host):
    """A session as postgres that pins nothing itself (an operator's psql) still resolves
    operators and functions in pg_catalog only: the app's roles create objects in `public`."""
    plain = host.check_output("runuser -u postgres -- psql -X -At -c 'SHOW search_path'")
    assert plain == "pg_catalog, pg_temp"
    for unit in ("postgresql-partitions.service", "postgresql-backup.service"):
        environment = host.check_output(f"systemctl show -p Environment --value {unit}")
        script = host.file("/usr/local/sbin/postgresql-backup").content_string
        assert (
            "PGOPTIONS=-c search_path=pg_catalog,pg_temp" in environment
            or "PGOPTIONS='-c search_path=pg_catalog,pg_temp'" in script
        ), unit


def test_databases_belong_to_postgres_and_no_role_shapes_their_sessions(host, v):
    """The app's owner role owns its tables, not the database: it can neither set a
    search_path for every session of the database nor create a schema (one named like a
    superuser would come first on that superuser's default path)."""
    for db in v("postgresql_databases"):
        name = db["name"]
        assert psql(host, f"SELECT datdba::regrole FROM pg_database WHERE datname = '{name}'") == (
            "postgres"
        )
        settings = psql(
            host,
            "SELECT coalesce(s.setrole::regrole::text, 'every role') || ': ' || c"
            " FROM pg_db_role_setting s, unnest(s.setconfig) AS c"
            f" WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = '{name}')"
            " AND c LIKE 'search\\_path=%'",
        )
        assert settings == "", f"{name} sets a search_path: {settings}"
        creators = psql(
            host,
            "SELECT r.rolname FROM pg_roles r WHERE NOT r.rolsuper"
            f" AND has_database_privilege(r.oid, '{name}', 'CREATE') ORDER BY 1",
        )
        assert creators == "", f"may create schemas in {name}: {creators}"
        superuser_schemas = psql(
            host,
            "SELECT n.nspname FROM pg_namespace n JOIN pg_roles r ON r.rolname = n.nspname"
            " WHERE r.rolsuper",
            name,
        )
        assert superuser_schemas == "", f"schemas named like a superuser in {name}"


def test_only_postgres_logs_in_over_the_socket_without_a_password(host, v):
    """An OS account named like a database role (the app's, say) is asked for its password.
    The metrics exporter's role, where there is one, comes in only through pg_ident's map of
    its own OS account, to the postgres database."""
    rules = psql(
        host,
        "SELECT array_to_string(user_name, ',') || ' ' || array_to_string(database, ',')"
        " || ' ' || coalesce(array_to_string(options, ','), '') FROM pg_hba_file_rules"
        " WHERE type = 'local' AND auth_method IN ('peer', 'ident', 'trust')",
    )
    wanted = ["postgres all"]
    exporter = v("postgresql_monitoring_role")
    if exporter:
        wanted.append(f"{exporter} postgres map=monitoring")
    assert [line.strip() for line in rules.splitlines()] == wanted
    ident = host.file(host.check_output("ls /etc/postgresql/*/main/pg_ident.conf"))
    maps = [
        line.split()
        for line in ident.content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert maps == (
        [["monitoring", v("postgresql_monitoring_os_user"), exporter]] if exporter else []
    )


@pytest.mark.destructive
def test_runtime_role_changes_rows_but_no_schema(host, v, runtime_login, events):
    """The role the app runs as writes rows (a new month's child included) and is refused
    every change to the schema and every direct call into the partitioning."""
    database, user, _ = runtime_login
    if database != events["database"]:
        pytest.skip("the partitioned table is not in the runtime role's database")
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    suffix, timestamp = ahead(events, 1)
    drop_children(host, events, [suffix])
    inserted = as_role(host, v, runtime_login, insert_sql(events, timestamp))
    assert inserted.rc == 0, inserted.stderr
    assert f"{events['table']}_p{suffix}" in children(host, events)
    owner = psql(
        host,
        f"SELECT tableowner FROM pg_tables WHERE tablename = '{events['table']}_p{suffix}'",
        database,
    )
    assert owner == events["owner"]
    refused = {
        f"CREATE TABLE {user}_probe (id int)": "permission denied for schema",
        f"CREATE INDEX {user}_probe ON {parent} ({events['column']})": "must be owner",
        f"DROP TABLE {parent}": "must be owner",
        f"ALTER TABLE {parent} ADD COLUMN probe int": "must be owner",
        f"SELECT partitions.create_child('public', '{events['table']}', '{timestamp}')": (
            "permission denied for function create_child"
        ),
        "SELECT partitions.maintain_all()": "permission denied for function maintain_all",
    }
    for sql, error in refused.items():
        result = as_role(host, v, runtime_login, sql)
        assert result.rc != 0, f"{user} may run: {sql}"
        assert error in result.stderr, (sql, result.stderr)
    superuser = psql(host, f"SELECT rolsuper FROM pg_roles WHERE rolname = '{user}'")
    assert superuser == "f"


@pytest.mark.destructive
def test_no_role_makes_a_child_beyond_the_look_ahead_cap(host, v, runtime_login, events):
    """The role the app runs as may insert rows and call the parent's function, so it could
    make a child for any range; retention drops only old ones. Past max_ahead ranges after
    the current one it is refused, by the trigger, by the function and in bulk; so is
    postgres, since every path creates as the parent's owner."""
    database, user, _ = runtime_login
    if database != events["database"]:
        pytest.skip("the partitioned table is not in the runtime role's database")
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    limit = max_ahead(events)
    far, far_timestamp = ahead(events, limit + 1)
    last, last_timestamp = ahead(events, limit)
    drop_children(host, events, [far, last])
    before = children(host, events)
    attempts = {
        "the insert trigger": insert_sql(events, far_timestamp),
        "the parent's function": f"SELECT partitions.\"{parent}\"('{far_timestamp}')",
        "sixty ranges in one call": (
            f'SELECT partitions."{parent}"('
            f"(now() + i * interval '1 {events['interval']}')::timestamp)"
            " FROM generate_series(1, 60) AS i"
        ),
    }
    for path, sql in attempts.items():
        result = as_role(host, v, runtime_login, sql)
        assert result.rc != 0, f"{user} made a child too far ahead through {path}"
        assert "max_ahead" in result.stderr, (path, result.stderr)
    refused = host.run(
        f"{SUPERUSER_PSQL} -At -v ON_ERROR_STOP=1 -d {shlex.quote(database)} -c "
        + shlex.quote(insert_sql(events, far_timestamp))
    )
    assert refused.rc != 0 and "max_ahead" in refused.stderr, refused.stderr
    assert children(host, events) == before
    # The last range inside the cap is still made on demand.
    inserted = as_role(host, v, runtime_login, insert_sql(events, last_timestamp))
    assert inserted.rc == 0, inserted.stderr
    assert f"{events['table']}_p{last}" in children(host, events)
    drop_children(host, events, [last])


# The owner's code (here a partial index whose predicate calls a function the owner wrote) is
# copied onto every new child. It must run with the owner's rights however the child is made:
# by a direct call, by the insert trigger and by the maintenance timer (as postgres). Against
# a create_child that ran as postgres, the owner made itself superuser this way.
ATTACK = """
CREATE TABLE stackkit_attack_log (who name NOT NULL);
CREATE FUNCTION stackkit_attack_payload() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO public.stackkit_attack_log (who) VALUES (current_user);
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN true;
END $$;
CREATE FUNCTION stackkit_attack_predicate(integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS $$ BEGIN RETURN public.stackkit_attack_payload(); END $$;
"""
ATTACK_CLEANUP = """
DROP FUNCTION IF EXISTS public.stackkit_attack_predicate(integer) CASCADE;
DROP FUNCTION IF EXISTS public.stackkit_attack_payload();
DROP TABLE IF EXISTS public.stackkit_attack_log;
"""


@pytest.mark.destructive
def test_owner_code_on_a_new_child_never_runs_as_a_superuser(host, v, app_login, events):
    database, owner, _ = app_login
    if database != events["database"] or owner != events["owner"]:
        pytest.skip("the trigger-partitioned table is not the app owner's")
    schema = events.get("schema", "public")
    parent = f"{schema}.{events['table']}"
    declarative = [t for t in declarative_tables(v) if t["owner"] == owner]
    (first, at_first), (second, at_second), (third, at_third) = (
        ahead(events, n) for n in (1, 2, 3)
    )
    suffixes = [first, second, third]
    paths = {
        "a direct call of create_child": (
            f"SELECT partitions.create_child('{schema}', '{events['table']}', '{at_first}')"
        ),
        "the insert trigger": insert_sql(events, at_second),
        "a direct call of the parent's function": f"SELECT partitions.\"{parent}\"('{at_third}')",
    }
    drop_children(host, events, suffixes)
    psql(host, ATTACK_CLEANUP, database)
    try:
        planted = as_role(host, v, app_login, ATTACK)
        assert planted.rc == 0, planted.stderr
        for table in [events, *declarative]:
            target = f"{table.get('schema', 'public')}.{table['table']}"
            index = as_role(
                host,
                v,
                app_login,
                f"CREATE INDEX stackkit_attack_{table['table']} ON {target} ({table['column']})"
                " WHERE public.stackkit_attack_predicate(1)",
            )
            assert index.rc == 0, index.stderr
        for path, sql in paths.items():
            psql(host, "TRUNCATE public.stackkit_attack_log", database)
            result = as_role(host, v, app_login, sql)
            assert result.rc == 0, f"{path}: {result.stderr}"
            ran_as = set(psql(host, "SELECT who FROM public.stackkit_attack_log", database).split())
            assert ran_as == {owner}, f"through {path} the owner's code ran as {ran_as}"
        for table in declarative:
            # The timer runs as postgres and makes the children ahead: take the last one away.
            newest = children(host, table)[-1]
            psql(host, f"DROP TABLE {table.get('schema', 'public')}.{newest}", database)
            psql(host, "TRUNCATE public.stackkit_attack_log", database)
            host.check_output("systemctl start postgresql-partitions.service")
            assert newest in children(host, table)
            ran_as = set(psql(host, "SELECT who FROM public.stackkit_attack_log", database).split())
            assert ran_as == {owner}, f"through the timer the owner's code ran as {ran_as}"
        assert psql(host, f"SELECT rolsuper FROM pg_roles WHERE rolname = '{owner}'") == "f"
    finally:
        psql(host, f"ALTER ROLE {owner} NOSUPERUSER")
        drop_children(host, events, suffixes)
        psql(host, ATTACK_CLEANUP, database)


@pytest.mark.destructive
def test_rows_for_three_months_land_in_three_children_and_none_in_the_parent(host, events):
    future = [ahead(events, n) for n in (1, 2, 3)]
    suffixes = [suffix for suffix, _ in future]
    drop_children(host, events, suffixes)
    for _, timestamp in future:
        psql(host, insert_sql(events, timestamp), events["database"])
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    assert psql(host, f"SELECT count(*) FROM ONLY {parent}", events["database"]) == "0"
    names = {f"{events['table']}_p{s}" for s in suffixes}
    assert names <= set(children(host, events))
    for name in names:
        rows = psql(
            host,
            f"SELECT count(*) FROM {events.get('schema', 'public')}.{name}",
            events["database"],
        )
        assert rows == "1", name
        owner = psql(
            host, f"SELECT tableowner FROM pg_tables WHERE tablename = '{name}'", events["database"]
        )
        assert owner == events["owner"]
        # The parent's indexes, its primary key's included (LIKE ... INCLUDING INDEXES).
        indexes = psql(
            host,
            f"SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = '{name}'),"
            f" (SELECT count(*) FROM pg_indexes WHERE tablename = '{events['table']}')",
            events["database"],
        ).split("|")
        assert indexes[0] == indexes[1], f"{name} lacks the parent's indexes"
        assert int(indexes[0]) >= len(events.get("indexes", []))


@pytest.mark.destructive
def test_explain_of_one_range_scans_one_child(host, events):
    future = [ahead(events, n) for n in (1, 2, 3)]
    for suffix, timestamp in future:
        if f"{events['table']}_p{suffix}" not in children(host, events):
            psql(host, insert_sql(events, timestamp), events["database"])
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    middle, following = future[1][0], future[2][0]

    def start(suffix: str) -> str:
        return f"{suffix[:4]}-{suffix[4:6]}-{suffix[6:] or '01'} 00:00:00+00"

    # Constant bounds: constraint exclusion compares constants at plan time (an expression such
    # as `timestamptz + interval` is only stable, and would keep every child in the plan).
    plan = psql(
        host,
        f"EXPLAIN SELECT * FROM {parent} WHERE {events['column']} >= '{start(middle)}'"
        f" AND {events['column']} < '{start(following)}'",
        events["database"],
    )
    scanned = set(re.findall(rf"\b({events['table']}_p\d+)\b", plan))
    assert scanned == {f"{events['table']}_p{middle}"}, plan


@pytest.mark.destructive
def test_eight_concurrent_connections_create_a_new_month_without_error(
    host, v, events, runtime_login
):
    """Eight sessions, all connected and released at the same instant, insert into a month that
    has no child yet, as the role the app runs as: every one succeeds and one child holds all
    the rows."""
    database, user, password = runtime_login
    if database != events["database"]:
        pytest.skip("the partitioned table is not in the app's database")
    suffix, timestamp = ahead(events, max_ahead(events))
    drop_children(host, events, [suffix])
    row = insert_sql(events, timestamp)
    client = (
        f"PGPASSWORD={shlex.quote(password)} psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1"
        f" -p {v('postgresql_port')} -U {user} -d {database}"
    )
    script = f"""
release=$(date -u -d '+3 seconds' '+%Y-%m-%d %H:%M:%S+00')
pids=()
for i in 1 2 3 4 5 6 7 8; do
  {client} -c "SELECT pg_sleep_until('$release')" -c {shlex.quote(row)} \\
    >/tmp/pg-concurrent-$i.log 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${{pids[@]}}"; do wait "$pid" || failed=$((failed + 1)); done
cat /tmp/pg-concurrent-*.log
echo "failed=$failed"
"""
    result = host.run(f"bash -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    assert "failed=0" in result.stdout, result.stdout
    assert "already exists" not in result.stdout
    child = f"{events.get('schema', 'public')}.{events['table']}_p{suffix}"
    assert psql(host, f"SELECT count(*) FROM {child}", events["database"]) == "8"
    assert children(host, events).count(f"{events['table']}_p{suffix}") == 1
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    assert psql(host, f"SELECT count(*) FROM ONLY {parent}", events["database"]) == "0"


@pytest.mark.destructive
def test_retention_service_drops_a_child_older_than_the_retention(host, events):
    """Children older than the retention go, and so do children beyond the look-ahead cap that
    an older version let a role make (made here as postgres, as such a version would have);
    children inside the window stay."""
    suffix = "200101"
    future, timestamp = ahead(events, 1)
    far, _ = ahead(events, max_ahead(events) + 1)
    schema = events.get("schema", "public")
    drop_children(host, events, [suffix, far])
    psql(host, insert_sql(events, "2001-01-15 00:00:00+00"), events["database"])
    psql(host, insert_sql(events, timestamp), events["database"])
    psql(
        host,
        f"CREATE TABLE {schema}.{events['table']}_p{far} () INHERITS ({schema}.{events['table']});"
        f" ALTER TABLE {schema}.{events['table']}_p{far} OWNER TO {events['owner']}",
        events["database"],
    )
    assert {f"{events['table']}_p{s}" for s in (suffix, far)} <= set(children(host, events))
    host.check_output("systemctl start postgresql-partitions.service")
    remaining = children(host, events)
    assert f"{events['table']}_p{suffix}" not in remaining
    assert f"{events['table']}_p{far}" not in remaining, "a child beyond the cap must go"
    assert f"{events['table']}_p{future}" in remaining, "a future child must survive retention"


def test_partition_maintenance_runs_on_a_timer(host, v):
    if not v("postgresql_partitioned_tables"):
        pytest.skip("no partitioned table in this inventory")
    assert host.service("postgresql-partitions.timer").is_enabled
    assert host.service("postgresql-partitions.timer").is_running
    sql = host.file(
        f"{v('postgresql_partitions_sql_dir')}/{v('postgresql_partitioned_tables')[0]['database']}.sql"
    )
    assert sql.mode == 0o640
    assert "Ansible managed" in sql.content_string


def test_declarative_partitions_exist_ahead(host, v):
    tables = declarative_tables(v)
    if not tables:
        pytest.skip("no declarative table in this inventory")
    for table in tables:
        schema = table.get("schema", "public")
        parent = f"{schema}.{table['table']}"
        kind = psql(
            host,
            f"SELECT relkind FROM pg_class WHERE oid = '{parent}'::regclass",
            table["database"],
        )
        assert kind == "p"
        fmt = "YYYYMM" if table["interval"] == "month" else "YYYYMMDD"
        expected = psql(
            host,
            f"SELECT string_agg('{table['table']}_p' || to_char(date_trunc('{table['interval']}',"
            f" now() AT TIME ZONE 'UTC') + i * interval '1 {table['interval']}', '{fmt}'), ' ')"
            f" FROM generate_series(0, {table.get('premake', 3)}) AS i",
            table["database"],
        ).split()
        assert set(expected) <= set(children(host, table))


@pytest.mark.destructive
def test_declarative_partitions_take_todays_rows(host, v):
    tables = declarative_tables(v)
    if not tables:
        pytest.skip("no declarative table in this inventory")
    for table in tables:
        # A partitioned parent stores no row of its own, so the row is looked for in the child
        # named for this period: a row in a default partition, or in no child, fails.
        schema = table.get("schema", "public")
        fmt = "YYYYMM" if table["interval"] == "month" else "YYYYMMDD"
        child = psql(
            host,
            f"SELECT '{table['table']}_p' || to_char(date_trunc('{table['interval']}',"
            f" now() AT TIME ZONE 'UTC'), '{fmt}')",
            table["database"],
        )
        count = f"SELECT count(*) FROM {schema}.{child}"
        before = int(psql(host, count, table["database"]))
        psql(host, insert_sql(table, "now()").replace("'now()'", "now()"), table["database"])
        assert int(psql(host, count, table["database"])) == before + 1, f"not in {child}"


def test_backup_dir_is_private_and_the_timer_enabled(host, v):
    backup_dir = host.file(v("postgresql_backup_dir"))
    assert backup_dir.is_directory
    assert backup_dir.user == "postgres"
    assert backup_dir.mode == 0o700
    if v("postgresql_backup_enabled"):
        assert host.service("postgresql-backup.timer").is_enabled


def test_server_runs_sandboxed_as_postgres(host):
    """The distribution's postgresql@.service with the role's drop-in: the whole cluster unit,
    pg_ctlcluster included, runs as postgres with no capability and within the data bound."""
    unit = host.check_output(
        "systemctl list-units --plain --no-legend 'postgresql@*' | awk '{print $1}'"
    )
    assert unit, "no postgresql@ cluster unit is loaded"
    assert "/etc/systemd/system/postgresql@.service.d/50-stackkit.conf" in host.check_output(
        f"systemctl show -p DropInPaths --value {unit}"
    )
    assert_sandboxed(host, unit, "data")
    postmaster = main_pid(host, unit)
    assert host.process.get(pid=postmaster).user == "postgres"


def test_backup_and_maintenance_units_are_sandboxed(host):
    for unit in ("postgresql-backup", "postgresql-partitions"):
        if host.file(f"/etc/systemd/system/{unit}.service").exists:
            assert_sandboxed(host, unit, "data", running=False)


def newest_dump(host, backup_dir: str, database: str) -> str:
    return host.check_output(f"ls -1 {backup_dir}/{database}/{database}-*.dump | sort | tail -n 1")


@pytest.mark.destructive
def test_dump_drop_restore_gives_equal_row_counts(host, v):
    if v("postgresql_backup_databases"):
        pytest.skip("backups are limited to named databases in this inventory")
    scratch = "stackkit_restore_check"
    psql(host, f"DROP DATABASE IF EXISTS {scratch}")
    psql(host, f"CREATE DATABASE {scratch}")
    psql(
        host,
        "CREATE TABLE public.items AS"
        " SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 1234) AS g",
        scratch,
    )
    try:
        host.check_output("systemctl start postgresql-backup.service")
        dump = newest_dump(host, v("postgresql_backup_dir"), scratch)
        assert host.file(dump).user == "postgres"
        psql(host, f"DROP DATABASE {scratch}")
        psql(host, f"CREATE DATABASE {scratch}")
        host.check_output(f"sudo -u postgres pg_restore --exit-on-error -d {scratch} {dump}")
        assert psql(host, "SELECT count(*) FROM public.items", scratch) == "1234"
    finally:
        psql(host, f"DROP DATABASE IF EXISTS {scratch}")


@pytest.mark.destructive
def test_partitioned_data_restores_from_its_dump(host, v, events):
    """The app database's dump, restored into a fresh database, holds every partitioned row."""
    database = events["database"]
    if v("postgresql_backup_databases") and database not in v("postgresql_backup_databases"):
        pytest.skip(f"{database} is not backed up in this inventory")
    psql(host, insert_sql(events, ahead(events, 3)[1]), database)
    host.check_output("systemctl start postgresql-backup.service")
    dump = newest_dump(host, v("postgresql_backup_dir"), database)
    scratch = f"{database}_restore_check"
    parent = f"{events.get('schema', 'public')}.{events['table']}"
    psql(host, f"DROP DATABASE IF EXISTS {scratch}")
    psql(host, f"CREATE DATABASE {scratch}")
    try:
        host.check_output(f"sudo -u postgres pg_restore --exit-on-error -d {scratch} {dump}")
        original = psql(host, f"SELECT count(*) FROM {parent}", database)
        assert int(original) > 0
        assert psql(host, f"SELECT count(*) FROM {parent}", scratch) == original
        assert psql(host, f"SELECT count(*) FROM ONLY {parent}", scratch) == "0"
    finally:
        psql(host, f"DROP DATABASE IF EXISTS {scratch}")


@pytest.mark.destructive
def test_backup_keeps_only_the_newest_dumps(host, v):
    keep = v("postgresql_backup_keep")
    backup_dir = v("postgresql_backup_dir")
    database = "postgres_rotation_check"
    psql(host, f"DROP DATABASE IF EXISTS {database}")
    psql(host, f"CREATE DATABASE {database}")
    try:
        old = [
            f"{backup_dir}/{database}/{database}-2000010{i}T000000Z.dump"
            for i in range(1, keep + 2)
        ]
        host.check_output(f"install -d -o postgres -g postgres -m 0700 {backup_dir}/{database}")
        host.check_output(f"sudo -u postgres touch {' '.join(old)}")
        host.check_output("systemctl start postgresql-backup.service")
        kept = host.check_output(f"ls -1 {backup_dir}/{database}").split()
        assert len(kept) == keep
        assert Path(old[-1]).name in kept and Path(old[0]).name not in kept
    finally:
        psql(host, f"DROP DATABASE IF EXISTS {database}")
        host.run(f"rm -rf {backup_dir}/{database}")
