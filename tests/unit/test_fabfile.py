"""fabfile.py: the remote commands of each task, in order, and the environment it renders.

The SSH side is fabric.testing's MockRemote: a session fails when a command differs from the
expected one, comes in another order, or is missing or extra. The build and the inventory are
replaced by fixed values; the last test renders the environment file through the inventory and
compares it with what ansible-playbook's template module writes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from shlex import quote

import pytest
from fabric import Config, Connection
from fabric.testing.base import Command, Session
from invoke.exceptions import Exit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import fabfile  # noqa: E402

ENVIRONMENT = b"#\n# Ansible managed\n#\nDJANGO_SECRET_KEY='x'\n"
TARGET = fabfile.Target(
    root="/srv/catalogue",
    config_dir="/etc/catalogue",
    group="catalogue",
    python="/usr/bin/python3",
    keep_releases=5,
    source_dir=ROOT / "app",
    build_dir=Path("/build"),
    migrate=True,
    owner_user="catalogue",
    owner_password="owner-secret",
    reindex=True,
    web_unit="catalogue-web",
    gunicorn_config="/etc/catalogue/gunicorn.conf.py",
    probe_host="localhost",
    environment=ENVIRONMENT,
)
BUILD = fabfile.Build(
    release_id="aaaaaaaaaaaa",
    archive=Path("/build/catalogue-aaaaaaaaaaaa.tar.gz"),
    wheelhouse_id="bbbbbbbbbbbb",
    wheelhouse=Path("/build/wheelhouse-bbbbbbbbbbbb.tar"),
)
RELEASE = "/srv/catalogue/releases/aaaaaaaaaaaa"
WHEELHOUSE = "/srv/catalogue/wheelhouse/bbbbbbbbbbbb"
OLD = "/srv/catalogue/releases/000000000000"


def sudo(command: str) -> str:
    """What invoke sends for c.sudo(command)."""
    return f"sudo -S -p '[sudo] password: ' {command}"


def run(command: str, out: str = "", exit: int = 0, stdin: str | None = None) -> Command:
    return Command(command, out=out.encode(), exit=exit, in_=stdin.encode() if stdin else None)


@pytest.fixture
def builds(monkeypatch):
    """Fixed inventory values and build; records the platforms builds were asked for."""
    platforms = []

    def build_release(target, python, arch):
        platforms.append((python, arch))
        return BUILD

    monkeypatch.setattr(fabfile, "load_target", lambda host, inventory=None: TARGET)
    monkeypatch.setattr(fabfile, "build_release", build_release)
    monkeypatch.setattr(fabfile, "_MIGRATED", set())
    return platforms


def expect(remote, commands: list[Command]) -> Session:
    session = Session(host="10.0.0.5", user="deploy", commands=commands, enable_sftp=True)
    remote.expect_sessions(session)
    return session


def host() -> Connection:
    # No stdin under pytest: invoke must not try to forward it.
    return Connection("deploy@10.0.0.5", config=Config(overrides={"run": {"in_stream": False}}))


def preamble() -> list[Command]:
    return [
        run("test -x /usr/local/bin/catalogue-manage"),
        run(f"/usr/bin/python3 -c {quote(fabfile.PLATFORM_PROBE)}", out="3.13 x86_64\n"),
        run(
            sudo(
                "install -d -o root -g root -m 0755 /srv/catalogue /srv/catalogue/releases"
                " /srv/catalogue/wheelhouse /srv/catalogue/archives"
            )
        ),
        run(sudo("install -d -o root -g catalogue -m 0750 /etc/catalogue")),
    ]


def restart(web: bool) -> list[Command]:
    commands = [
        run(sudo("systemctl restart catalogue.target")),
        run(
            "timeout 60 sh -c"
            " 'until systemctl is-active --quiet catalogue.target; do sleep 1; done'"
        ),
        run("test -e /etc/systemd/system/catalogue-web.service", exit=0 if web else 1),
    ]
    if web:
        probe = quote(fabfile.HEALTH_PROBE)
        commands.append(
            run(sudo(f"/usr/bin/python3 -c {probe} /etc/catalogue/gunicorn.conf.py localhost 60"))
        )
    return commands


def test_first_deploy_ships_installs_migrates_switches_and_restarts(remote_with_sftp, builds):
    session = expect(
        remote_with_sftp,
        [
            *preamble(),
            run(f"test -e {WHEELHOUSE}/.stackkit-complete", exit=1),
            run("mktemp", out="/tmp/tmp.wheels\n"),
            run(sudo(f"install -d -o root -g root -m 0755 {WHEELHOUSE}")),
            run(sudo(f"tar -xf /tmp/tmp.wheels -C {WHEELHOUSE}")),
            run("rm -f /tmp/tmp.wheels"),
            run(sudo(f"sh -c 'umask 022 && echo bbbbbbbbbbbb > {WHEELHOUSE}/.stackkit-complete'")),
            run(f"test -e {RELEASE}/.venv/.stackkit-complete", exit=1),
            run("mktemp", out="/tmp/tmp.code\n"),
            run(sudo(f"install -d -o root -g root -m 0755 {RELEASE}")),
            run(sudo(f"tar -xf /tmp/tmp.code -C {RELEASE}")),
            run("rm -f /tmp/tmp.code"),
            run(sudo(f"/usr/bin/python3 -m venv --clear {RELEASE}/.venv")),
            run(
                sudo(
                    f"env PIP_CONFIG_FILE=/dev/null {RELEASE}/.venv/bin/pip install --quiet"
                    f" --disable-pip-version-check --no-index --find-links {WHEELHOUSE}"
                    " --only-binary=:all: --no-deps --require-hashes"
                    f" --requirement {RELEASE}/requirements.txt"
                )
            ),
            run(
                sudo(
                    f"env --chdir={RELEASE} DJANGO_SETTINGS_MODULE=catalogue_site.settings.base"
                    f" PYTHONDONTWRITEBYTECODE=1 {RELEASE}/.venv/bin/python manage.py"
                    " collectstatic --noinput"
                )
            ),
            run(sudo(f"{RELEASE}/.venv/bin/python -m compileall -q {RELEASE}")),
            run(
                sudo(f"sh -c 'umask 022 && echo aaaaaaaaaaaa > {RELEASE}/.venv/.stackkit-complete'")
            ),
            run(sudo("sha256sum /etc/catalogue/catalogue.env"), exit=1),
            run("mktemp", out="/tmp/tmp.env\n"),
            run(
                sudo(
                    "install -o root -g catalogue -m 0640 /tmp/tmp.env /etc/catalogue/catalogue.env"
                )
            ),
            run("rm -f /tmp/tmp.env"),
            run("readlink /srv/catalogue/current", exit=1),
            run("readlink /srv/catalogue/previous", exit=1),
            run(
                sudo(
                    f"env CATALOGUE_RELEASE={RELEASE} POSTGRES_OWNER_USER=catalogue"
                    " /usr/local/bin/catalogue-manage migrate --noinput"
                ),
                stdin="owner-secret\n",
            ),
            run(sudo(f"env CATALOGUE_RELEASE={RELEASE} /usr/local/bin/catalogue-manage reindex")),
            run(sudo(f"ln -sfn {RELEASE} /srv/catalogue/current.tmp")),
            run(sudo("mv -T /srv/catalogue/current.tmp /srv/catalogue/current")),
            *restart(web=True),
            run(
                "find /srv/catalogue/releases -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\\n'",
                out=f"1700000000.5 {RELEASE}\n",
            ),
            run(
                "find /srv/catalogue/wheelhouse -mindepth 1 -maxdepth 1 -type d",
                out=f"{WHEELHOUSE}\n",
            ),
        ],
    )
    fabfile.deploy(host())
    assert builds == [("3.13", "x86_64")]
    uploads = [c.kwargs for c in session.sftp.put.call_args_list]
    assert [u["remotepath"] for u in uploads] == ["/tmp/tmp.wheels", "/tmp/tmp.code"]
    assert uploads[0]["localpath"].endswith("/build/wheelhouse-bbbbbbbbbbbb.tar")
    assert uploads[1]["localpath"].endswith("/build/catalogue-aaaaaaaaaaaa.tar.gz")
    environment = session.sftp.putfo.call_args.kwargs
    assert environment["remotepath"] == "/tmp/tmp.env"
    assert environment["fl"].getvalue() == ENVIRONMENT


def test_redeploying_the_live_release_uploads_and_restarts_nothing(
    remote_with_sftp, builds, capsys
):
    digest = hashlib.sha256(ENVIRONMENT).hexdigest()
    # Six other releases, oldest first: keeping 5 in all with current and previous leaves
    # room for 3 of them. The old wheelhouse goes.
    others = [f"/srv/catalogue/releases/{n:012d}" for n in range(1, 7)]
    listing = [f"{1700000000 + n}.0 {path}" for n, path in enumerate(others)]
    listing += [f"1700000100.0 {OLD}", f"1700000200.0 {RELEASE}"]
    session = expect(
        remote_with_sftp,
        [
            *preamble(),
            run(f"test -e {WHEELHOUSE}/.stackkit-complete"),
            run(f"test -e {RELEASE}/.venv/.stackkit-complete"),
            run(
                sudo("sha256sum /etc/catalogue/catalogue.env"),
                out=f"{digest}  /etc/catalogue/catalogue.env\n",
            ),
            run("readlink /srv/catalogue/current", out=f"{RELEASE}\n"),
            run("readlink /srv/catalogue/previous", out=f"{OLD}\n"),
            run(
                sudo(
                    f"env CATALOGUE_RELEASE={RELEASE} POSTGRES_OWNER_USER=catalogue"
                    " /usr/local/bin/catalogue-manage migrate --noinput"
                ),
                stdin="owner-secret\n",
            ),
            run(
                "find /srv/catalogue/releases -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\\n'",
                out="\n".join(reversed(listing)) + "\n",
            ),
            run(
                "find /srv/catalogue/wheelhouse -mindepth 1 -maxdepth 1 -type d",
                out=f"/srv/catalogue/wheelhouse/cccccccccccc\n{WHEELHOUSE}\n",
            ),
            run(
                sudo(
                    f"rm -rf {others[0]} {others[1]} {others[2]}"
                    " /srv/catalogue/wheelhouse/cccccccccccc"
                )
            ),
        ],
    )
    fabfile.deploy(host())
    assert not session.sftp.put.called
    assert not session.sftp.putfo.called
    assert "release aaaaaaaaaaaa is already live" in capsys.readouterr().out


def test_rollback_swaps_current_and_previous_and_restarts(remote_with_sftp, builds):
    expect(
        remote_with_sftp,
        [
            run("readlink /srv/catalogue/current", out=f"{RELEASE}\n"),
            run("readlink /srv/catalogue/previous", out=f"{OLD}\n"),
            run(f"test -e {OLD}"),
            run(sudo(f"ln -sfn {OLD} /srv/catalogue/current.tmp")),
            run(sudo("mv -T /srv/catalogue/current.tmp /srv/catalogue/current")),
            run(sudo(f"ln -sfn {RELEASE} /srv/catalogue/previous.tmp")),
            run(sudo("mv -T /srv/catalogue/previous.tmp /srv/catalogue/previous")),
            *restart(web=False),
        ],
    )
    fabfile.rollback(host())


def test_rollback_without_a_previous_release_fails_and_switches_nothing(remote_with_sftp, builds):
    expect(
        remote_with_sftp,
        [
            run("readlink /srv/catalogue/current", out=f"{RELEASE}\n"),
            run("readlink /srv/catalogue/previous", exit=1),
        ],
    )
    with pytest.raises(Exit, match="nothing to roll back to"):
        fabfile.rollback(host())


# -- the environment file ------------------------------------------------------------------------
HOSTS_YML = """\
all:
  hosts:
    stack-web1: {ansible_host: 10.0.0.5, app_log_level: DEBUG}
    stack-data1: {ansible_host: 10.0.0.9}
  children:
    app: {hosts: {stack-web1: }}
    web: {hosts: {stack-web1: }}
    db: {hosts: {stack-data1: }}
    cache: {hosts: {stack-data1: }}
    broker: {hosts: {stack-data1: }}
    search: {hosts: {stack-data1: }}
    docs: {hosts: {stack-data1: }}
"""
# A role whose defaults are the app role's: a play gives them the same low precedence.
# (`-e @defaults/main.yml` would not do: extra vars outrank the inventory.)
PLAYBOOK = """\
- name: Render the environment file as the app role does
  hosts: stack-web1
  gather_facts: false
  roles: [envfile]
"""
ROLE_TASKS = """\
- name: Write the app's environment
  ansible.builtin.template:
    src: {template}
    dest: {dest}
    mode: "0600"
"""


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    """The local inventory's group_vars (vault included) with a hosts file like stackhosts'."""
    path = tmp_path / "inventory"
    shutil.copytree(ROOT / "inventories" / "local" / "group_vars", path / "group_vars")
    (path / "hosts.yml").write_text(HOSTS_YML)
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(fabfile.LOCAL_VAULT_PASSWORD))
    return path


def ansible_rendering(tmp_path: Path, inventory: Path) -> bytes:
    role = tmp_path / "roles" / "envfile"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    shutil.copy(ROOT / "roles" / "app" / "defaults" / "main.yml", role / "defaults" / "main.yml")
    dest = tmp_path / "catalogue.env"
    template = ROOT / "templates" / "catalogue.env.j2"
    (role / "tasks" / "main.yml").write_text(ROLE_TASKS.format(template=template, dest=dest))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(fabfile.LOCAL_VAULT_PASSWORD),
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
    }
    playbook = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    playbook += ["-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
    playbook.append(str(tmp_path / "play.yml"))
    subprocess.run(playbook, cwd=tmp_path, env=env, check=True, capture_output=True)
    return dest.read_bytes()


def test_environment_file_is_byte_identical_to_ansibles(tmp_path, inventory):
    rendered = fabfile.render_environment(fabfile.host_templar("10.0.0.5", inventory))
    assert b"DJANGO_LOG_LEVEL='DEBUG'\n" in rendered  # the host's variable beats the default
    assert b"POSTGRES_HOST='10.0.0.9'\n" in rendered  # group_vars resolved through hostvars
    assert rendered == ansible_rendering(tmp_path, inventory)


def test_an_unknown_host_is_refused(inventory):
    with pytest.raises(Exit, match=r"10\.9\.9\.9 is neither a host nor an ansible_host"):
        fabfile.host_templar("10.9.9.9", inventory)
