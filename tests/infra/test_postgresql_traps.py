"""No path from the app's roles to a PostgreSQL superuser (CVE-2018-1058's class and its kin).

The owner role (migrations) and the runtime role (the app) plant every kind of code that a
superuser's session could be tricked into running: operators and functions that are a closer
match than pg_catalog's for what the kit's SQL compares, a database-level search_path, a schema
named like the superuser ("$user"), an event trigger, index and default expressions and
triggers on the kit's tables. Each planted body records who ran it and, when that is a
superuser, makes the owner a superuser, as an attacker would. Then the kit does what it does
as postgres: the converge (its partitioning SQL applied again), the maintenance timer, a backup
and the read-only checks of `make verify`. No planted code may run as a superuser, and no role
may end with more rights than it started with. The app host's OS account named like the owner
gets no password-less session over the Unix socket either.

Destructive: it plants objects, runs the role and backups (all removed again afterwards).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SUPERUSER_PSQL

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://db"]
ROLE = "postgresql"
BIN = Path(sys.executable).parent
LOG = "public.stackkit_trap_log"

# Operators whose argument types have no exact match in pg_catalog, so that an exact one
# elsewhere on the path wins: the comparisons that catalog queries make (oid with a reg* type,
# name with text).
OPERATORS = [
    ("<>", "oid", "regnamespace"),
    ("=", "oid", "regnamespace"),
    ("=", "oid", "regclass"),
    ("<>", "oid", "regclass"),
    ("=", "oid", "regrole"),
    ("=", "name", "text"),
]
# Functions that are a closer match than pg_catalog's for calls made with these types.
FUNCTIONS = [
    ("pg_get_serial_sequence", "text, name", "text", "NULL"),
    ("to_regclass", "name", "regclass", "NULL"),
    ("format_type", "oid, smallint", "text", "NULL"),
    ("quote_ident", "name", "text", "$1::text"),
]


def payload(owner: str) -> str:
    """The attacker's body: log who runs it; from a superuser, make the owner one."""
    return f"""
CREATE TABLE {LOG} (trap text NOT NULL, ran_as name NOT NULL, superuser boolean NOT NULL);
GRANT SELECT, INSERT ON {LOG} TO PUBLIC;
CREATE FUNCTION public.stackkit_trap(trap text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    su boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r
                    WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
BEGIN
    INSERT INTO {LOG} VALUES (trap, current_user, su);
    IF su THEN
        EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', '{owner}');
    END IF;
    RETURN true;
END $$;
GRANT EXECUTE ON FUNCTION public.stackkit_trap(text) TO PUBLIC;
CREATE FUNCTION public.stackkit_trap_immutable(anyelement) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN public.stackkit_trap('index expression'); END $$;
CREATE FUNCTION public.stackkit_trap_default() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM public.stackkit_trap('default'); RETURN ''; END $$;
CREATE FUNCTION public.stackkit_trap_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN PERFORM public.stackkit_trap('trigger ' || TG_OP); RETURN NULL; END $$;
"""


def operator_sql(schema: str, op: str, left: str, right: str, index: int) -> str:
    name = f"{schema}.stackkit_trap_op{index}"
    compare = f"$1 OPERATOR(pg_catalog.{op}) $2::oid" if left == "oid" else f"$1::text {op} $2"
    return (
        f"CREATE FUNCTION {name}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM public.stackkit_trap('operator {schema}.{op}({left}, {right})');"
        f" RETURN {compare}; END $$;"
        f" CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right},"
        f" FUNCTION = {name});"
    )


def function_sql(schema: str, name: str, args: str, returns: str, result: str) -> str:
    return (
        f"CREATE FUNCTION {schema}.{name}({args}) RETURNS {returns} LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM public.stackkit_trap('function {schema}.{name}({args})');"
        f" RETURN {result}; END $$;"
    )


def superuser_psql(host, sql: str, database: str) -> str:
    """SQL as postgres with the search path pinned, as every superuser session must be."""
    return host.check_output(
        f"{SUPERUSER_PSQL} -At -v ON_ERROR_STOP=1 -d {shlex.quote(database)} -c {shlex.quote(sql)}"
    )


def as_role(host, port, login, sql: str):
    database, user, password = login
    return host.run(
        f"PGPASSWORD={shlex.quote(password)} psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1"
        f" -p {port} -U {shlex.quote(user)} -d {shlex.quote(database)}"
        f" -c {shlex.quote(sql)}"
    )


def rights(host, database: str) -> str:
    """Every role's attributes and memberships, and who owns the database."""
    return superuser_psql(
        host,
        "SELECT string_agg(r.rolname || ':' || r.rolsuper || r.rolcreaterole || r.rolcreatedb"
        " || r.rolreplication || r.rolbypassrls || ':' || coalesce((SELECT string_agg("
        "m.roleid::regrole::text, ',' ORDER BY 1) FROM pg_auth_members m"
        " WHERE m.member = r.oid), ''), ' ' ORDER BY r.rolname) FROM pg_roles r"
        " WHERE r.rolname !~ '^pg_'",
        database,
    )


def superuser_runs(host, database: str) -> list[str]:
    rows = superuser_psql(
        host, f"SELECT trap || ' as ' || ran_as FROM {LOG} WHERE superuser ORDER BY 1", database
    )
    return sorted(set(rows.splitlines()))


@pytest.fixture(scope="module")
def logins(var):
    databases = [d for d in var("postgresql_databases", ROLE) if d.get("readwrite_users")]
    if not databases:
        pytest.skip("no database with an owner and a read-write role in this inventory")
    database = databases[0]
    passwords = {u["name"]: u["password"] for u in var("postgresql_users", ROLE)}
    owner, runtime = database["owner"], database["readwrite_users"][0]
    return (
        (database["name"], owner, passwords[owner]),
        (database["name"], runtime, passwords[runtime]),
    )


@pytest.fixture(scope="module")
def planted(host, var, logins):
    """Plant every trap the owner can; record which plants each role was refused."""
    owner_login, runtime_login = logins
    database, owner, _ = owner_login
    tables = [t for t in var("postgresql_partitioned_tables", ROLE) if t["database"] == database]
    port = var("postgresql_port", ROLE)
    baseline = rights(host, database)
    cleanup(host, database, owner)
    refused: dict[str, dict[str, bool]] = {}
    try:
        planted = as_role(host, port, owner_login, payload(owner))
        assert planted.rc == 0, planted.stderr
        plants = {
            "schema named like the superuser": "CREATE SCHEMA postgres",
            "database search_path": (
                f"ALTER DATABASE {database} SET search_path = postgres, public, pg_catalog"
            ),
            "event trigger": (
                "CREATE EVENT TRIGGER stackkit_trap ON ddl_command_end"
                " EXECUTE FUNCTION public.stackkit_trap_trigger()"
            ),
            "function in the partitions schema": function_sql(
                "partitions", "child_name", "name, text, timestamptz", "name", "NULL"
            ),
        }
        for schema in ("public", "postgres"):
            for index, (op, left, right) in enumerate(OPERATORS):
                plants[f"operator {schema}.{op}({left}, {right})"] = operator_sql(
                    schema, op, left, right, index
                )
            for name, args, returns, result in FUNCTIONS:
                plants[f"function {schema}.{name}({args})"] = function_sql(
                    schema, name, args, returns, result
                )
        for table in tables:
            parent = f"{table.get('schema', 'public')}.{table['table']}"
            plants[f"trigger on {parent}"] = (
                f"CREATE TRIGGER stackkit_trap AFTER INSERT OR UPDATE OR DELETE ON {parent}"
                " FOR EACH STATEMENT EXECUTE FUNCTION public.stackkit_trap_trigger();"
                f" CREATE TRIGGER stackkit_trap_truncate AFTER TRUNCATE ON {parent}"
                " FOR EACH STATEMENT EXECUTE FUNCTION public.stackkit_trap_trigger()"
            )
            plants[f"index expression on {parent}"] = (
                f"CREATE INDEX stackkit_trap_{table['table']} ON {parent}"
                f" (({table['column']} IS NULL)) WHERE public.stackkit_trap_immutable(1)"
            )
            text_column = next(
                (c["name"] for c in table["columns"] if c["type"].split()[0] in ("text", "jsonb")),
                None,
            )
            if text_column:
                cast = (
                    "::jsonb"
                    if "jsonb"
                    in next(c["type"] for c in table["columns"] if c["name"] == text_column)
                    else ""
                )
                plants[f"default expression on {parent}"] = (
                    f"ALTER TABLE {parent} ALTER COLUMN {text_column}"
                    f" SET DEFAULT (public.stackkit_trap_default() || '{{}}'){cast}"
                )
        for name, sql in plants.items():
            refused.setdefault(name, {})[owner] = as_role(host, port, owner_login, sql).rc != 0
        # The runtime role tries the same, into the schemas it can reach.
        for name, sql in plants.items():
            refused[name][runtime_login[1]] = as_role(host, port, runtime_login, sql).rc != 0
        yield {"database": database, "owner": owner, "refused": refused, "baseline": baseline}
    finally:
        # Dropping the planted functions (CASCADE) takes their index and triggers along.
        cleanup(host, database, owner)


def cleanup(host, database: str, owner: str) -> None:
    """Take every plant away again (as postgres, with the path pinned)."""
    superuser_psql(
        host,
        "DO $$ DECLARE r record; BEGIN"
        " FOR r IN SELECT e.evtname FROM pg_event_trigger e WHERE e.evtname = 'stackkit_trap'"
        " LOOP EXECUTE 'DROP EVENT TRIGGER stackkit_trap'; END LOOP;"
        " FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_trigger t"
        " WHERE t.tgname IN ('stackkit_trap', 'stackkit_trap_truncate')"
        " LOOP EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel); END LOOP;"
        " FOR r IN SELECT a.adrelid::regclass AS rel, c.attname FROM pg_attrdef a"
        " JOIN pg_attribute c ON c.attrelid = a.adrelid AND c.attnum = a.adnum"
        " WHERE pg_get_expr(a.adbin, a.adrelid) LIKE '%stackkit_trap%'"
        " LOOP EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', r.rel, r.attname);"
        " END LOOP;"
        " FOR r IN SELECT o.oid::regoperator AS op FROM pg_operator o"
        " JOIN pg_proc p ON p.oid = o.oprcode WHERE p.proname LIKE 'stackkit_trap%'"
        " LOOP EXECUTE format('DROP OPERATOR %s', r.op); END LOOP;"
        " FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname IN ('public', 'postgres', 'partitions')"
        " AND p.proowner <> 'postgres'::regrole"
        " AND (p.proname LIKE 'stackkit_trap%' OR p.prosrc LIKE '%stackkit_trap%')"
        " LOOP EXECUTE format('DROP FUNCTION %s CASCADE', r.fn); END LOOP;"
        " END $$",
        database,
    )
    superuser_psql(host, f"DROP TABLE IF EXISTS {LOG}", database)
    superuser_psql(host, "DROP SCHEMA IF EXISTS postgres CASCADE", database)
    superuser_psql(host, f"ALTER DATABASE {database} RESET search_path", database)
    superuser_psql(host, f"ALTER ROLE {owner} NOSUPERUSER", database)


@pytest.fixture
def fresh_log(host, planted):
    """Each kit operation starts from an empty log and an owner without rights it gained."""
    database = planted["database"]
    superuser_psql(host, f"ALTER ROLE {planted['owner']} NOSUPERUSER", database)
    superuser_psql(host, f"TRUNCATE {LOG}", database)
    return database


def test_the_app_roles_cannot_plant_where_a_superuser_looks(planted):
    """The plants that would reach a superuser's session whatever SQL it runs are refused to
    both roles: a schema named like the superuser, the database's search_path, an event
    trigger, code in the kit's own schema."""
    for name in (
        "schema named like the superuser",
        "database search_path",
        "event trigger",
        "function in the partitions schema",
    ):
        allowed = [role for role, refused in planted["refused"][name].items() if not refused]
        assert not allowed, f"{', '.join(allowed)} may plant: {name}"
    # The runtime role creates nothing anywhere: no operator, function, trigger or index.
    for name, by_role in planted["refused"].items():
        runtime = [role for role in by_role if role != planted["owner"]]
        for role in runtime:
            assert by_role[role], f"{role} may plant: {name}"


def test_the_converge_runs_no_planted_code_as_a_superuser(host, v, fresh_log, tmp_path):
    """The role again, with its partitioning SQL applied anew (the file is taken away first,
    so the run re-applies it as a first run and a changed inventory do)."""
    sql_dir = v("postgresql_partitions_sql_dir")
    host.check_output(f"sudo rm -f {shlex.quote(sql_dir)}/*.sql")
    playbook = tmp_path / "postgresql.yml"
    playbook.write_text(
        "- name: Converge the database hosts\n  hosts: db\n  become: true\n  roles: [postgresql]\n"
    )
    inventory = host.backend.ansible_inventory
    run = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", inventory, str(playbook)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
    )  # fmt: skip
    ran = superuser_runs(host, fresh_log)
    assert not ran, f"the converge ran planted code as a superuser: {ran}"
    assert run.returncode == 0, run.stdout[-3000:]


def test_the_maintenance_timer_runs_no_planted_code_as_a_superuser(host, fresh_log):
    host.check_output("systemctl start postgresql-partitions.service")
    ran = superuser_runs(host, fresh_log)
    assert not ran, f"the maintenance ran planted code as a superuser: {ran}"


def test_a_backup_runs_no_planted_code_as_a_superuser(host, fresh_log):
    host.check_output("systemctl start postgresql-backup.service")
    ran = superuser_runs(host, fresh_log)
    assert not ran, f"the backup ran planted code as a superuser: {ran}"


def test_the_read_only_checks_run_no_planted_code_as_a_superuser(host, fresh_log):
    """The read-only PostgreSQL checks, as `make verify` runs them against this inventory."""
    inventory = host.backend.ansible_inventory
    run = subprocess.run(
        [str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--connection=ansible", "--sudo",
         f"--ansible-inventory={inventory}", "-m", "not destructive",
         "tests/infra/test_postgresql.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={k: val for k, val in os.environ.items() if k != "STACKKIT_TESTS"},
    )  # fmt: skip
    ran = superuser_runs(host, fresh_log)
    assert not ran, f"the read-only checks ran planted code as a superuser: {ran}"
    assert run.returncode == 0, run.stdout[-3000:]


def test_no_role_ends_with_more_rights_than_it_had(host, planted):
    assert rights(host, planted["database"]) == planted["baseline"]


def test_the_os_account_named_like_the_owner_gets_no_password_less_session(host, planted):
    """Over the Unix socket, an OS account named like the owner role (the app's own account
    on hosts that run the app) is asked for the role's password."""
    owner, database = planted["owner"], planted["database"]
    made = host.run(f"id -u {owner}").rc != 0
    if made:
        host.check_output(f"useradd --system --no-create-home --shell /usr/sbin/nologin {owner}")
    try:
        result = host.run(
            f"runuser -u {owner} -- psql -X -At -w -d {database} -U {owner}"
            " -c 'SELECT current_user'"
        )
        assert result.rc != 0, f"the OS account {owner} logged in as {result.stdout.strip()}"
    finally:
        if made:
            host.run(f"userdel {owner}")
