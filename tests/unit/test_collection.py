"""The roles, playbooks and module as the stackkit.kit collection: what `ansible-galaxy
collection build` ships, and that another project which installs the artifact can call every
role by its fully qualified name and run the collection's own playbooks (docs/collection.md).

Ansible resolves the roles without running anything: `--syntax-check` and `--list-tasks` load
every play and every statically imported role and task file, which is where a role name or a
module that does not resolve inside the collection fails."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import ansible
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
BIN = Path(sys.executable).parent
# The roles a play applies; an internal role (`_name`, used through tasks_from) has no main.
APPLIED_ROLES = sorted(
    p.name
    for p in (ROOT / "roles").iterdir()
    if (p / "tasks" / "main.yml").is_file() and not p.name.startswith("_")
)
SHIPPED = {
    "roles",
    "playbooks",
    "plugins",
    "templates",
    "meta",
    "docs",
    "README.md",
    "CHANGELOG.md",
    "MANIFEST.json",
    "FILES.json",
}
# One host in every group the playbooks target.
INVENTORY = {
    "all": {
        "hosts": {"node1": {}},
        "children": {
            group: {"hosts": {"node1": {}}}
            for group in ("web", "worker", "db", "cache", "broker", "search", "docs")
        },
    }
}
INVENTORY["all"]["children"]["app"] = {"children": {"web": {}, "worker": {}}}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _listed_roles(listing: str) -> set[str]:
    return set(re.findall(rf"^\s+{re.escape(FQCN)}\.(\w+) : ", listing, re.MULTILINE))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """The artifact, installed into a project of its own that knows nothing of this repository:
    an empty ansible.cfg, no roles path, only the installed collection and those the `ansible`
    package bundles (the dependencies)."""
    tmp = tmp_path_factory.mktemp("collection")
    project = tmp / "project"
    project.mkdir()
    (project / "ansible.cfg").write_text("[defaults]\n")
    (project / "hosts.yml").write_text(yaml.safe_dump(INVENTORY))
    (tmp / "no-roles").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(tmp / "collections"),
        "ANSIBLE_ROLES_PATH": str(tmp / "no-roles"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
    }
    build = [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp)]
    _run([*build, str(ROOT)], cwd=project, env=env)
    (tarball,) = tmp.glob(f"{GALAXY['namespace']}-{GALAXY['name']}-*.tar.gz")
    install = [str(BIN / "ansible-galaxy"), "collection", "install", "--no-deps"]
    _run([*install, "-p", str(tmp / "collections"), str(tarball)], cwd=project, env=env)
    return {"tarball": tarball, "project": project, "env": env}


def test_version_is_pyprojects():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert GALAXY["version"] == pyproject["project"]["version"]


def test_metadata_agrees_with_the_roles():
    metas = [yaml.safe_load(p.read_text()) for p in ROOT.glob("roles/*/meta/main.yml")]
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    assert {m["galaxy_info"]["license"] for m in metas} == set(GALAXY["license"])
    assert {m["galaxy_info"]["namespace"] for m in metas} == {GALAXY["namespace"]}
    oldest = {m["galaxy_info"]["min_ansible_version"] for m in metas}
    assert {runtime["requires_ansible"].removeprefix(">=").removesuffix(".0")} == oldest


def test_dependencies_are_the_collections_the_roles_call():
    """galaxy.yml's dependencies, requirements.yml and the FQCNs in roles and playbooks name
    the same collections (a name counts if it is an installed collection: `net.core.somaxconn`
    is a sysctl)."""
    text = "\n".join(
        p.read_text()
        for pattern in ("roles/**/*.yml", "roles/**/*.j2", "playbooks/*.yml", "templates/*.j2")
        for p in ROOT.glob(pattern)
    )
    site = Path(ansible.__file__).resolve().parents[1]
    used = {
        f"{ns}.{name}"
        for ns, name in set(re.findall(r"\b([a-z_]+)\.([a-z_]+)\.[a-z_0-9]+\b", text))
        if (site / "ansible_collections" / ns / name / "MANIFEST.json").is_file()
    } - {"ansible.builtin", FQCN}
    requirements = yaml.safe_load((ROOT / "requirements.yml").read_text())
    assert set(GALAXY["dependencies"]) == used
    assert {c["name"] for c in requirements["collections"]} == used


def test_the_artifact_ships_the_kit_and_nothing_of_its_workshop(collection):
    with tarfile.open(collection["tarball"]) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert {n.split("/")[0] for n in names} <= SHIPPED, "a new top-level entry ships"
        for workshop in ("app/", "molecule/", "tests/", "inventories/", ".cache/", ".venv/"):
            assert not [n for n in names if n.startswith(workshop)], workshop
        for role in APPLIED_ROLES:
            assert f"roles/{role}/tasks/main.yml" in names
        for plugin in (
            "modules/mongodb_login_check.py",
            "modules/signing_key.py",
            "modules/host_state.py",
            "lookup/run_inputs.py",
            "filter/stackkit.py",
            "filter/weak_secrets.yml",
            "filter/public_addresses.yml",
            "filter/in_container.yml",
        ):
            assert f"plugins/{plugin}" in names
        assert "templates/catalogue.env.j2" in names
        for member in (m for m in members if m.isfile()):
            assert "vault" not in member.name.lower(), member.name
            head = tar.extractfile(member).read(64)
            assert not head.startswith(b"$ANSIBLE_VAULT"), f"{member.name} is a vault"
            assert b"PRIVATE KEY-----" not in head, f"{member.name} is a private key"


def test_another_project_calls_every_role_by_its_fqcn(collection):
    """Each role by FQCN, and the mongodb role's task file that calls the collection's own
    module by its FQCN."""
    playbook = [
        {
            "name": "Every role of the collection",
            "hosts": "all",
            "roles": [f"{FQCN}.{role}" for role in APPLIED_ROLES],
            "tasks": [
                {
                    "name": "The mongodb role's logins",
                    "ansible.builtin.import_role": {
                        "name": f"{FQCN}.mongodb",
                        "tasks_from": "users.yml",
                    },
                }
            ],
        }
    ]
    project, env = collection["project"], collection["env"]
    (project / "fqcn.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    command = [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "fqcn.yml"]
    _run([*command, "--syntax-check"], cwd=project, env=env)
    listing = _run([*command, "--list-tasks"], cwd=project, env=env)
    assert _listed_roles(listing) == set(APPLIED_ROLES)
    assert f"{FQCN}.mongodb : Check which passwords log in" in listing


def test_the_collections_site_playbook_resolves_every_role(collection):
    project, env = collection["project"], collection["env"]
    playbooks = sorted(p.stem for p in (ROOT / "playbooks").glob("*.yml"))
    every = [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "--syntax-check"]
    _run(every + [f"{FQCN}.{name}" for name in playbooks], cwd=project, env=env)
    # site.yml applies every role; the listing names a role only once it has been found.
    site = [str(BIN / "ansible-playbook"), "-i", "hosts.yml", f"{FQCN}.site", "--list-tasks"]
    assert _listed_roles(_run(site, cwd=project, env=env)) == set(APPLIED_ROLES)


def test_roles_included_at_run_time_are_in_the_collection():
    """include_role is resolved only when it runs, so the listing cannot see it: every role it
    names must be one the collection ships, by short name or by this collection's FQCN."""
    names = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.split(".")[-1] in ("include_role", "import_role"):
                    names.append(value["name"])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in [*ROOT.glob("playbooks/*.yml"), *ROOT.glob("roles/*/tasks/*.yml")]:
        walk(yaml.safe_load(path.read_text()))
    shipped = {p.name for p in (ROOT / "roles").iterdir() if p.is_dir()}
    assert names, "the playbooks include roles (deploy.yml, rollback.yml)"
    assert {n.removeprefix(f"{FQCN}.") for n in names} <= shipped


def _spec(options: dict) -> dict:
    """Name -> (type, required, default, elements, no_log, suboptions), from a documentation's
    options or from an argument_spec."""
    return {
        name: (
            o.get("type", "str"),
            o.get("required", False),
            o.get("default"),
            o.get("elements"),
            o.get("no_log", False),
            _spec(o.get("suboptions") or o.get("options") or {}),
        )
        for name, o in options.items()
    }


@pytest.mark.parametrize("module_name", ["mongodb_login_check", "signing_key", "host_state"])
def test_the_module_documents_the_options_it_takes(collection, monkeypatch, module_name):
    """What validate-modules checks first (it needs the network here): ansible-doc finds the
    module by its FQCN in the installed collection, and its documented options are the ones
    its argument_spec takes."""
    name = f"{FQCN}.{module_name}"
    command = [str(BIN / "ansible-doc"), "-t", "module", "--json", name]
    doc = json.loads(_run(command, cwd=collection["project"], env=collection["env"]))
    source = ROOT / "plugins" / "modules" / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(module_name, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    taken = {}

    def capture(**kwargs):
        taken.update(kwargs)
        raise SystemExit

    monkeypatch.setattr(module, "AnsibleModule", capture)
    with pytest.raises(SystemExit):
        module.main()
    assert _spec(doc[name]["doc"]["options"]) == _spec(taken["argument_spec"])


def test_the_inputs_lookup_is_documented_in_the_collection(collection):
    """ansible-doc finds the lookup every run's first play calls (playbooks/tasks/state.yml)."""
    name = f"{FQCN}.run_inputs"
    command = [str(BIN / "ansible-doc"), "-t", "lookup", "--json", name]
    doc = json.loads(_run(command, cwd=collection["project"], env=collection["env"]))
    assert {"names", "exclude", "extra"} <= set(doc[name]["doc"]["options"])


@pytest.mark.parametrize("filter_name", ["weak_secrets", "public_addresses", "in_container"])
def test_the_filters_are_documented_in_the_collection(collection, filter_name):
    """ansible-doc finds each filter the roles call by its FQCN in the installed collection."""
    name = f"{FQCN}.{filter_name}"
    command = [str(BIN / "ansible-doc"), "-t", "filter", "--json", name]
    doc = json.loads(_run(command, cwd=collection["project"], env=collection["env"]))
    assert doc[name]["doc"]["name"] == filter_name
