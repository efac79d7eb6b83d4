"""The fast path of a run: stackkit.kit.host_state and stackkit.kit.run_inputs.

A run skips a host's roles only when the host reads as it was recorded after its last complete
run and the run's inputs are the same (playbooks/tasks/state.yml). These run the module and the
lookup for real, on the controller, against a directory standing in for a host's files and
probes, and check that every kind of change the drift suite makes on a host is seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from preflight import ROOT, run_play

# The module runs with the controller's own Python, whatever else the machine has.
LOCAL = {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}


def state_play(
    tmp_path: Path, inputs: str | None = "inputs-1", record: bool = False, path: str = ""
) -> dict:
    """Run the module once on the controller; its result. `path` goes before the controller's
    own PATH (a stand-in systemctl)."""
    task = {
        "name": "state",
        "stackkit.kit.host_state": {
            **({"inputs": inputs} if inputs is not None else {}),
            "trees": [str(tmp_path / "etc")],
            "paths": [str(tmp_path / "srv" / "*"), str(tmp_path / "srv" / "*" / "*")],
            "exclude": ["*/volatile", "self-disabling.timer"],
            "probe_dir": str(tmp_path / "probes"),
            "path": str(tmp_path / "srv" / "kit" / "state.json"),
            "record": record,
        },
        "register": "result",
    }
    if path:
        task["environment"] = {"PATH": f"{path}:{{{{ lookup('env', 'PATH') }}}}"}
    out = tmp_path / "result.json"
    show = {"ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": str(out)}}
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": LOCAL, "tasks": [task, show]}]  # fmt: skip
    run = run_play(tmp_path, play, {})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return json.loads(out.read_text())


def relink(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "etc" / "redis").mkdir(parents=True)
    (tmp_path / "etc" / "redis" / "redis.conf").write_text("maxmemory 64mb\n")
    (tmp_path / "etc" / "volatile").write_text("changes on its own\n")
    secret = tmp_path / "etc" / "catalogue.env"
    secret.write_text("SECRET=x\n")
    secret.chmod(0o640)
    (tmp_path / "srv" / "catalogue").mkdir(parents=True)
    (tmp_path / "srv" / "catalogue" / "current").symlink_to("releases/a")
    probes = tmp_path / "probes"
    probes.mkdir()
    (tmp_path / "grants").write_text("app: SELECT\n")
    probe = probes / "postgresql"
    probe.write_text(f"#!/bin/sh\ncat {tmp_path / 'grants'}\n")
    probe.chmod(0o700)
    first = state_play(tmp_path, record=True)
    assert first["converge"] and first["reasons"] == ["no record of a complete run"]
    assert first["recorded"] and not first["changed"]
    # The record's own directory (under a path the state reads) is created by the first record
    # and is not part of the state: the host reads as recorded right after it.
    assert (tmp_path / "srv" / "kit" / "state.json").stat().st_mode & 0o777 == 0o600
    return tmp_path


def test_a_host_as_recorded_converges_nothing(host: Path):
    again = state_play(host)
    assert again["converge"] is False and again["reasons"] == []
    # Recording the same state again writes nothing.
    assert state_play(host, record=True)["recorded"] is False


@pytest.mark.parametrize(
    ("drift", "reason"),
    [
        (lambda h: (h / "etc/redis/redis.conf").write_text("maxmemory 1mb\n"), "redis.conf"),
        (lambda h: (h / "etc/catalogue.env").chmod(0o644), "catalogue.env"),
        (lambda h: (h / "etc/redis/redis.conf").unlink(), "redis.conf"),
        (lambda h: (h / "etc/redis/extra.conf").write_text("x\n"), "extra.conf"),
        (lambda h: relink(h / "srv/catalogue/current", "releases/b"), "current"),
        (lambda h: (h / "grants").write_text("app: SELECT, CREATE\n"), "probe postgresql"),
        (lambda h: (h / "probes/postgresql").chmod(0o600), "probe postgresql"),
    ],
    ids=["edited", "mode", "deleted", "added", "link", "probe", "probe-gone"],
)
def test_every_kind_of_drift_is_seen_and_named(host: Path, drift, reason: str):
    drift(host)
    found = state_play(host)
    assert found["converge"] is True
    assert any(reason in line for line in found["reasons"]), found["reasons"]


def test_what_changes_on_its_own_is_left_out(host: Path):
    (host / "etc" / "volatile").write_text("changed\n")
    assert state_play(host)["converge"] is False


def test_changed_inputs_converge_whatever_the_state(host: Path):
    found = state_play(host, inputs="inputs-2")
    assert found["converge"] is True
    assert "inputs changed" in found["reasons"][0]


def test_the_record_is_never_written_in_check_mode(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    task = {
        "stackkit.kit.host_state": {
            "inputs": "x", "trees": [str(tmp_path / "etc")], "record": True,
            "probe_dir": str(tmp_path / "none"), "path": str(tmp_path / "state.json"),
        },
    }  # fmt: skip
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": LOCAL, "tasks": [task]}]  # fmt: skip
    run = run_play(tmp_path, play, {}, "--check")
    assert run.returncode == 0, run.stdout[-2000:]
    assert not (tmp_path / "state.json").exists()


def inputs_digest(tmp_path: Path, variables: dict, name: str) -> str:
    """stackkit.kit.run_inputs for a play with these variables, over one directory."""
    (tmp_path / "kit").mkdir(exist_ok=True)
    lookup = (
        "{{ lookup('stackkit.kit.run_inputs', '%s', names='^demo_', exclude=['demo_skip']) }}"
        % (tmp_path / "kit")
    )
    directory = tmp_path / name
    directory.mkdir()
    out = directory / "digest"
    task = {"ansible.builtin.copy": {"content": lookup, "dest": str(out)}}
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {**LOCAL, **variables}, "tasks": [task]}]  # fmt: skip
    run = run_play(directory, play, {})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return out.read_text()


def test_the_inputs_digest_follows_variables_files_and_not_the_rest(tmp_path: Path):
    base = {"demo_port": 5432, "demo_list": ["a", "b"], "demo_skip": 1, "other": 1}
    first = inputs_digest(tmp_path, base, "a")
    assert first == inputs_digest(tmp_path, base, "b")
    assert first == inputs_digest(tmp_path, {**base, "other": 2, "demo_skip": 2}, "c")
    assert first != inputs_digest(tmp_path, {**base, "demo_port": 5433}, "d")
    # A variable's value as templated for the host counts, not its text.
    assert first == inputs_digest(tmp_path, {**base, "demo_port": "{{ 5430 + 2 }}"}, "e")
    (tmp_path / "kit" / "defaults.yml").write_text("x: 1\n")
    assert first != inputs_digest(tmp_path, base, "f")


def test_the_kits_files_count_wherever_the_importing_playbook_sits(tmp_path: Path):
    """kit= names the kit's own directories, found from the lookup's location (here the
    checkout, through playbooks/collections' links): a play in a directory of its own, as a
    playbook that imports site.yml from elsewhere is, digests the kit's files, the same as the
    checkout's directories named by path, and unlike the directories beside it (none)."""
    kit = ["roles", "plugins", "playbooks", "templates"]
    named = ", ".join(f"'{ROOT / name}'" for name in kit)
    elsewhere = ", ".join(f"'{tmp_path}/x/../{name}'" for name in kit)
    lookups = {
        name: "{{ lookup('stackkit.kit.run_inputs', " + terms + ", names='^demo_') }}"
        for name, terms in (("kit", f"kit={kit}"), ("named", named), ("beside", elsewhere))
    }
    tasks = [
        {"ansible.builtin.copy": {"content": lookup, "dest": str(tmp_path / name)}}
        for name, lookup in lookups.items()
    ]
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": LOCAL, "tasks": tasks}]  # fmt: skip
    run = run_play(tmp_path, play, {})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    digests = {name: (tmp_path / name).read_text() for name in lookups}
    assert digests["kit"] == digests["named"] != digests["beside"]


def test_a_variable_that_reads_another_roles_defaults_does_not_fail_the_run(tmp_path: Path):
    broken = {"demo_user": "{{ role_not_loaded_user }}"}
    assert inputs_digest(tmp_path, broken, "a") == inputs_digest(tmp_path, broken, "b")


def test_every_play_of_site_yml_reads_the_state_and_guards_its_roles():
    """A play that converged its roles whatever the state would undo the fast path's promise
    the other way: a role not guarded runs every time (slow), and a play that does not read
    the state leaves __stack_state undefined for the roles that are."""
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    files = [entry["ansible.builtin.import_playbook"] for entry in site]
    assert files[-1] == "record.yml"
    for name in files[:-1]:
        for play in yaml.safe_load((ROOT / "playbooks" / name).read_text()):
            pre = [t.get("ansible.builtin.import_tasks") for t in play.get("pre_tasks", [])]
            assert "tasks/state.yml" in pre, f"{name}: {play['name']} does not read the state"
            for role in play.get("roles", []):
                when = role.get("when")
                text = " ".join(when) if isinstance(when, list) else str(when)
                assert "__stack_state" in text, f"{name}: role {role['role']} is not guarded"


def test_without_inputs_the_state_alone_is_compared(host: Path):
    """How an operator (and the drift suite) asks a host what changed since its last complete
    run: no inputs' digest, so only the state counts, and nothing can be recorded."""
    assert state_play(host, inputs=None)["differ"] == 0
    (host / "etc/redis/redis.conf").write_text("maxmemory 1mb\n")
    found = state_play(host, inputs=None)
    assert found["converge"] is True and found["differ"] == 1


def test_a_second_change_to_an_item_already_differing_changes_the_state_digest(host: Path):
    """The drift suite tells kinds apart by this digest when two of them change the same
    probe's output (a grant, then a role attribute)."""
    (host / "grants").write_text("app: SELECT, CREATE\n")
    first = state_play(host, inputs=None)
    (host / "grants").write_text("app: SELECT, CREATE\napp: CREATEDB\n")
    second = state_play(host, inputs=None)
    assert first["differ"] == second["differ"] == 1
    assert first["state"] != second["state"]


def test_a_unit_that_stops_is_drift_unless_it_stops_on_its_own(tmp_path: Path):
    """The units are read with systemctl (a stand-in here). A unit excluded by name, as
    apt-listchanges' timer is (it disables itself after its first run), is never read; any
    other active unit that stops is seen."""
    (tmp_path / "etc").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    units = tmp_path / "units"
    units.write_text(
        "redis-server.service loaded active running Redis\n"
        "self-disabling.timer loaded active waiting Once\n"
    )
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f"#!/bin/sh\ncat {units}\n")
    systemctl.chmod(0o755)
    recorded = state_play(tmp_path, record=True, path=str(bin_dir))
    assert recorded["recorded"]
    units.write_text("redis-server.service loaded active running Redis\n")
    assert state_play(tmp_path, path=str(bin_dir))["converge"] is False
    units.write_text("")
    found = state_play(tmp_path, path=str(bin_dir))
    assert found["converge"] is True
    assert "unit redis-server.service: active -> absent" in found["reasons"], found["reasons"]
