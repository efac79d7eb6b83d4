"""Static checks of every role: the rooms every role has (defaults, meta, argument_specs,
preflight), defaults in step with argument_specs, managed headers, scored units, no role
dependencies. Cheap enough to run first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackkit.lint import argument_specs, unit_security

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_the_standard_rooms(role):
    for room in (
        "defaults/main.yml",
        "meta/main.yml",
        "meta/argument_specs.yml",
        "tasks/main.yml",
        "tasks/preflight.yml",
    ):
        assert (role / room).is_file(), f"{role.name}: {room} is missing"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_specs_agree(role):
    assert argument_specs.drift(role) == []


@pytest.mark.parametrize(
    "template",
    sorted(ROOT.glob("roles/*/templates/**/*.j2")) + sorted(ROOT.glob("templates/**/*.j2")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_template_carries_the_managed_header(template):
    assert "ansible_managed" in template.read_text()


def test_every_unit_template_is_scored_for_its_sandbox():
    """`make lint` scores each unit in unit_security.UNITS: a new unit cannot slip past it."""
    scored = {(unit.role, unit.template) for unit in unit_security.units(ROOT)}
    assert unit_security.unit_templates(ROOT) == scored


def test_every_exporter_the_monitoring_role_sandboxes_is_scored():
    """The tiers' exporters share one drop-in; each is scored over its own distribution unit,
    so a new exporter in the role's list is scored with no edit of the lint."""
    services = unit_security.tier_exporters(ROOT)
    assert {
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
        "prometheus-elasticsearch-exporter",
        "prometheus-nginx-exporter",
        "prometheus-blackbox-exporter",
    } <= set(services)
    scored = {unit.name: unit for unit in unit_security.units(ROOT)}
    for service in services:
        unit = scored[f"{service}.service"]
        assert unit.template == unit_security.TIER_EXPORTER
        assert (unit_security.UNITS_DIR / unit.base).is_file(), unit.base


def test_only_the_peer_authenticated_exporter_drops_private_users():
    """PostgreSQL's peer authentication needs the exporter's real uid; the others keep
    PrivateUsers like every other unit."""
    for service in unit_security.tier_exporters(ROOT):
        unit = next(u for u in unit_security.units(ROOT) if u.name == f"{service}.service")
        directives = unit_security.render(ROOT, unit).splitlines()
        if service == "prometheus-postgres-exporter":
            assert not [line for line in directives if line.startswith("PrivateUsers=")]
        else:
            assert "PrivateUsers=yes" in directives, service


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_roles_do_not_pull_in_other_roles(role):
    meta = yaml.safe_load((role / "meta" / "main.yml").read_text())
    assert not meta.get("dependencies"), "playbooks compose roles, not meta/dependencies"


def test_drift_is_reported(tmp_path):
    role = tmp_path / "demo"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text("demo_a: 1\ndemo_b: 2\nother: 3\n")
    (role / "meta" / "argument_specs.yml").write_text(
        yaml.safe_dump(
            {"argument_specs": {"main": {"options": {"demo_a": {}, "demo_c": {}, "other": {}}}}}
        )
    )
    problems = argument_specs.drift(role)
    assert any("demo_b is in defaults" in p for p in problems)
    assert any("demo_c is in meta/argument_specs.yml but has no default" in p for p in problems)
    assert any("other does not carry the role prefix" in p for p in problems)
