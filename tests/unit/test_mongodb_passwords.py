"""The mongodb role's users follow the vault: a changed admin or app password takes effect on
the next run, and a run with unchanged passwords changes nothing.

The role's user tasks run on the controller against the server the mongodb scenario runs in
mongod's place, SecantusDB (the role's secantusdb method; `make unit` installs the pinned release
in .cache/secantusdb). As on a host, the first user is created by the role's first_user.yml on a
run without authorisation (SecantusDB has no localhost exception), then the server restarts with
authorisation and roles enforced and users.yml takes over. Logins are checked with pymongo from
the app's virtualenv, the same driver the role's modules use.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from preflight import run_play, tasks_play

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".cache/secantusdb/bin/secantusd-py"
PYTHON = ROOT / "app/.venv/bin/python"
ADMIN_1, ADMIN_2 = "first-admin-password-0123", "second-admin-password-4567"
APP_1, APP_2 = "first-app-password-0123", "second-app-password-4567"

pytestmark = pytest.mark.skipif(
    not SERVER.is_file() or not PYTHON.is_file(),
    reason="needs SecantusDB and the app's virtualenv: run `make unit`",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(config: Path, port: int, *options: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(SERVER), "--config", str(config), *options],
        stdout=subprocess.DEVNULL,
        stderr=(config.parent / "server.log").open("ab"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "secantusd.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nstorage_path = "{data}"\n'
        'standalone = true\n\n[storage]\ncache_size = "128M"\n'
    )
    server = {"port": port, "data": data, "dir": tmp_path}
    first = start(config, port)
    try:
        result = run_play(tmp_path, tasks_play("mongodb", "first_user"), variables(server, ADMIN_1))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop(first)
    process = start(config, port, "--auth")
    try:
        yield server
    finally:
        stop(process)


def variables(server, admin: str, app: str = APP_1, previous: str = "") -> dict:
    return {
        "ansible_python_interpreter": str(PYTHON),
        "mongodb_port": server["port"],
        "mongodb_data_dir": str(server["data"]),
        "__mongodb_admin_password_file": str(server["dir"] / "admin-password"),
        "mongodb_admin_password": admin,
        "mongodb_admin_previous_password": previous,
        "mongodb_app_password": app,
    }


def converge(server, admin: str, app: str, previous: str = "") -> tuple[int, str]:
    """Run the role's user tasks; return the number of changed tasks and the output."""
    result = run_play(
        server["dir"], tasks_play("mongodb", "users"), variables(server, admin, app, previous)
    )
    out = result.stdout + result.stderr
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", out)
    assert recap, out
    if result.returncode != 0:
        return -1, out
    return int(recap.group(1)), out


def logs_in(server, user: str, database: str, password: str) -> bool:
    script = (
        "import sys, pymongo\n"
        "from pymongo.errors import OperationFailure\n"
        "user, db, pwd, port = sys.stdin.read().split('\\n')\n"
        "client = pymongo.MongoClient('127.0.0.1', int(port), username=user, password=pwd,"
        " authSource=db, authMechanism='SCRAM-SHA-256', directConnection=True,"
        " serverSelectionTimeoutMS=5000)\n"
        "try:\n"
        "    client.admin.command('ping')\n"
        "    print('yes')\n"
        "except OperationFailure as error:\n"
        "    print('no' if error.code == 18 else error)\n"
    )
    result = subprocess.run(
        [str(PYTHON), "-c", script],
        input=f"{user}\n{database}\n{password}\n{server['port']}",
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def admin_logs_in(server, password: str) -> bool:
    return logs_in(server, "admin", "admin", password)


def app_logs_in(server, password: str) -> bool:
    return logs_in(server, "catalogue", "catalogue", password)


def test_users_follow_the_vault_and_unchanged_passwords_change_nothing(server):
    changed, out = converge(server, ADMIN_1, APP_1)
    assert changed > 0, out
    assert admin_logs_in(server, ADMIN_1)
    assert app_logs_in(server, APP_1)
    assert converge(server, ADMIN_1, APP_1)[0] == 0

    # A new admin password: the role logs in with the previous one it is given.
    changed, out = converge(server, ADMIN_2, APP_1, previous=ADMIN_1)
    assert changed > 0, out
    assert admin_logs_in(server, ADMIN_2)
    assert not admin_logs_in(server, ADMIN_1)
    assert app_logs_in(server, APP_1)
    assert converge(server, ADMIN_2, APP_1)[0] == 0

    # A new app password alone changes the app user alone.
    changed, out = converge(server, ADMIN_2, APP_2)
    assert changed == 1, out
    assert app_logs_in(server, APP_2)
    assert not app_logs_in(server, APP_1)

    # Both at once, then nothing.
    changed, out = converge(server, ADMIN_1, APP_1, previous=ADMIN_2)
    assert changed > 0, out
    assert admin_logs_in(server, ADMIN_1)
    assert app_logs_in(server, APP_1)
    changed, out = converge(server, ADMIN_1, APP_1)
    assert changed == 0, out
    for secret in (ADMIN_1, ADMIN_2, APP_1, APP_2):
        assert secret not in out

    # No password is kept anywhere: only the play's own variables file holds one.
    holding = [
        path.name
        for path in server["dir"].rglob("*")
        if path.is_file() and path.name != "vars.yml"
        for secret in (ADMIN_1, ADMIN_2)
        if secret.encode() in path.read_bytes()
    ]
    assert holding == []


def test_the_admin_password_kept_by_earlier_versions_is_removed(server):
    kept = server["dir"] / "admin-password"
    kept.write_text(ADMIN_1)
    assert converge(server, ADMIN_1, APP_1)[0] > 0
    assert not kept.exists()


def test_a_new_admin_password_without_the_previous_one_fails_naming_the_variables(server):
    converge(server, ADMIN_1, APP_1)
    changed, out = converge(server, ADMIN_2, APP_1)
    assert changed == -1
    assert "mongodb_admin_previous_password" in out
    assert ADMIN_1 not in out
    assert ADMIN_2 not in out
    assert admin_logs_in(server, ADMIN_1)
