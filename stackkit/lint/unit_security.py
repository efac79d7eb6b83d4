"""Score every systemd unit the roles write with `systemd-analyze security`, offline.

Each unit template is rendered with its role's defaults for a representative Debian 13 host
and scored in a scratch root; a drop-in is scored over the distribution unit it extends (a
copy in tests/lint/units/). The tiers' exporters share one drop-in: it is scored over each of
them, as the monitoring role lists them. The table shows the exposure of each unit (0 is the
tightest sandbox, 10 none at all); the run fails when a unit exceeds its bound, when a template
with a [Service] section is missing from UNITS below, or when a drop-in's distribution unit has
no copy. The testinfra suites assert the same bounds on live hosts (conftest.assert_sandboxed).

Usage: python -m stackkit.lint.unit_security [ROOT]
(needs systemd-analyze 250 or later for --offline)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.utils.collection_loader import AnsibleCollectionConfig

# Exposure bounds: the app's own processes can give up nearly everything; a data service keeps
# what its engine needs (a JIT, its own memory and file limits).
APP_BOUND = 4.0
DATA_BOUND = 6.0

ROOT = Path(__file__).resolve().parents[2]
UNITS_DIR = ROOT / "tests" / "lint" / "units"
TEMPLATES = "templates/etc/systemd/system"

# The facts and inventory names the defaults need, for a production Debian 13 host.
HOST = {
    "inventory_hostname": "host1",
    "ansible_host": "10.0.0.5",
    "groups": {},
    "hostvars": {},
    "ansible_managed": "Ansible managed",
    "ansible_facts": {
        "default_ipv4": {"address": "10.0.0.5"},
        "processor_vcpus": 2,
        "memtotal_mb": 4096,
        "distribution": "Debian",
        "distribution_major_version": "13",
        "distribution_release": "trixie",
        "os_family": "Debian",
        "hostname": "host1",
        "virtualization_role": "host",
        "virtualization_type": "kvm",
    },
}


@dataclass
class Unit:
    role: str
    template: str  # under roles/<role>/templates/etc/systemd/system/
    name: str  # the unit as systemd knows it
    bound: float
    variables: dict = field(default_factory=dict)
    base: str = ""  # for a drop-in: the distribution unit under tests/lint/units/

    @property
    def label(self) -> str:
        dropin = Path(self.template.removesuffix(".j2")).name
        return f"{self.name} + {dropin}" if self.base else self.name


UNITS = [
    Unit("gunicorn", "catalogue-web.service.j2", "catalogue-web.service", APP_BOUND),
    Unit(
        "celery",
        "catalogue-worker.service.j2",
        "catalogue-worker-default.service",
        APP_BOUND,
        {"item": {"name": "default", "queues": ["default", "indexing"], "concurrency": 2}},
    ),
    Unit(
        "celery",
        "catalogue-worker.service.j2",
        "catalogue-worker-slow.service",
        APP_BOUND,
        {
            "item": {
                "name": "slow",
                "queues": ["slow"],
                "concurrency": 4,
                "prefetch_multiplier": 1,
                "options": ["-O", "fair"],
            }
        },
    ),
    Unit("celery", "catalogue-beat.service.j2", "catalogue-beat.service", APP_BOUND),
    Unit("elasticsearch", "elasticsearch.service.j2", "elasticsearch.service", DATA_BOUND),
    Unit(
        "elasticsearch",
        "elasticsearch-proxy.service.j2",
        "elasticsearch-proxy.service",
        APP_BOUND,
    ),
    Unit("mongodb", "mongod.service.j2", "mongod.service", DATA_BOUND),
    Unit(
        "mongodb",
        "mongod-proxy.service.j2",
        "mongod-proxy.service",
        APP_BOUND,
        {"mongodb_install_method": "secantusdb"},
    ),
    Unit(
        "mongodb",
        "disable-transparent-huge-pages.service.j2",
        "disable-transparent-huge-pages.service",
        DATA_BOUND,
    ),
    Unit("postgresql", "postgresql-backup.service.j2", "postgresql-backup.service", DATA_BOUND),
    Unit(
        "postgresql",
        "postgresql-partitions.service.j2",
        "postgresql-partitions.service",
        DATA_BOUND,
        {"postgresql_partitioned_tables": [{"database": "catalogue", "owner": "catalogue"}]},
    ),
    Unit(
        "postgresql",
        "postgresql@.service.d/50-stackkit.conf.j2",
        "postgresql@17-main.service",
        DATA_BOUND,
        base="postgresql@.service",
    ),
    Unit(
        "redis",
        "redis-server.service.d/50-stackkit.conf.j2",
        "redis-server.service",
        DATA_BOUND,
        base="redis-server.service",
    ),
    Unit(
        "monitoring",
        "prometheus.service.d/50-stackkit.conf.j2",
        "prometheus.service",
        DATA_BOUND,
        base="prometheus.service",
    ),
    Unit(
        "monitoring",
        "prometheus-alertmanager.service.d/50-stackkit.conf.j2",
        "prometheus-alertmanager.service",
        DATA_BOUND,
        base="prometheus-alertmanager.service",
    ),
    Unit(
        "monitoring",
        "prometheus-node-exporter.service.d/50-stackkit.conf.j2",
        "prometheus-node-exporter.service",
        DATA_BOUND,
        base="prometheus-node-exporter.service",
    ),
    Unit(
        "rabbitmq",
        "rabbitmq-server.service.d/50-stackkit.conf.j2",
        "rabbitmq-server.service",
        DATA_BOUND,
        base="rabbitmq-server.service",
    ),
]


# One drop-in for the tiers' exporters (the monitoring role's __monitoring_tier_services).
TIER_EXPORTER = "tier-exporter.service.d/50-stackkit.conf.j2"


@cache
def init_filters(root: Path) -> None:
    """The templates call the collection's filters (stackkit.kit.systemd_sandbox), found as a
    play finds them: through the checkout's own stackkit.kit links. Once per process: one that
    configured the collections already (stackkit.inventory does, in the unit tests) finds the
    same links through ansible.cfg's collections_path."""
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader([str(root / "playbooks" / "collections")])


def role_variables(root: Path, role: str) -> dict:
    """A role's defaults and vars, as templates to be rendered."""
    loader = DataLoader()
    variables: dict = {}
    for part in ("defaults", "vars"):
        path = root / "roles" / role / part / "main.yml"
        if path.exists():
            variables.update(loader.load_from_file(str(path), trusted_as_template=True) or {})
    return variables


def tier_exporters(root: Path) -> list[str]:
    """The units the tier exporters' drop-in is written for, as the monitoring role lists them."""
    init_filters(root)
    variables = {**role_variables(root, "monitoring"), **HOST}
    templar = Templar(loader=DataLoader(), variables=variables)
    return list(templar.template(variables["__monitoring_tier_services"]))


def units(root: Path = ROOT) -> list[Unit]:
    """Every unit the roles write: UNITS, and the tier exporters' drop-in over each exporter."""
    return UNITS + [
        Unit(
            "monitoring",
            TIER_EXPORTER,
            f"{service}.service",
            DATA_BOUND,
            {"item": service},
            base=f"{service}.service",
        )
        for service in tier_exporters(root)
    ]


def unit_templates(root: Path) -> set[tuple[str, str]]:
    """(role, template) of every template under roles/ that configures a service."""
    found = set()
    for path in root.glob(f"roles/*/{TEMPLATES}/**/*.j2"):
        if re.search(r"^\[Service\]", path.read_text(), re.MULTILINE):
            role = path.relative_to(root / "roles").parts[0]
            found.add((role, str(path.relative_to(root / "roles" / role / TEMPLATES))))
    return found


def render(root: Path, unit: Unit) -> str:
    """The template as the role writes it, with the role's defaults and vars."""
    init_filters(root)
    variables = {**role_variables(root, unit.role), **HOST, **unit.variables}
    source = (root / "roles" / unit.role / TEMPLATES / unit.template).read_text()
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(source))


def score(root: Path, unit: Unit, scratch: Path) -> tuple[float | None, int, str]:
    """(exposure, exit status, diagnostics) of the rendered unit; exposure None when it was not
    scored. The exit status is not 0 when the exposure is above the bound."""
    system = scratch / "etc" / "systemd" / "system"
    # A drop-in lands in the directory of the unit it is scored on (one template may serve
    # several units: the tiers' exporters share theirs).
    dropin = Path(unit.template.removesuffix(".j2")).name
    target = system / (f"{unit.name}.d/{dropin}" if unit.base else unit.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(root, unit))
    if unit.base:
        vendor = scratch / "lib" / "systemd" / "system"
        vendor.mkdir(parents=True, exist_ok=True)
        shutil.copy(UNITS_DIR / unit.base, vendor / unit.base)
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--no-pager",
            "--offline=true",
            f"--root={scratch}",
            f"--threshold={unit.bound * 10:.0f}",
            unit.name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    diagnostics = result.stderr.replace(str(scratch), "").strip()
    return (float(match.group(1)) if match else None), result.returncode, diagnostics


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else ROOT
    init_filters(root)
    if shutil.which("systemd-analyze") is None:
        print("unit_security: systemd-analyze is missing (Debian package systemd)", file=sys.stderr)
        return 2
    scored = units(root)
    problems = [
        f"{role}: {template} has a [Service] section but no entry in UNITS ({__file__})"
        for role, template in sorted(unit_templates(root) - {(u.role, u.template) for u in scored})
    ]
    rows = []
    for unit in scored:
        if unit.base and not (UNITS_DIR / unit.base).is_file():
            problems.append(
                f"{unit.name}: no copy of the distribution's unit in {UNITS_DIR} to score the"
                " drop-in over (Debian 13's, with the header the others carry)"
            )
            rows.append((unit.role, unit.label, None, unit.bound))
            continue
        with tempfile.TemporaryDirectory(prefix="unit-security-") as scratch:
            exposure, status, diagnostics = score(root, unit, Path(scratch))
        if exposure is None:
            problems.append(f"{unit.name}: systemd-analyze gave no score: {diagnostics}")
        elif exposure > unit.bound or status != 0:
            message = f"{unit.name}: exposure {exposure} is above {unit.bound} {diagnostics}"
            problems.append(message.strip())
        elif diagnostics:
            problems.append(f"{unit.name}: {diagnostics}")
        rows.append((unit.role, unit.label, exposure, unit.bound))
    width = max(len(label) for _, label, _, _ in rows)
    print(f"{'role':<14}{'unit':<{width + 2}}{'exposure':>8}{'bound':>7}")
    for role, label, exposure, bound in rows:
        shown = "-" if exposure is None else f"{exposure:.1f}"
        verdict = "" if exposure is not None and exposure <= bound else "  FAIL"
        print(f"{role:<14}{label:<{width + 2}}{shown:>8}{bound:>7.1f}{verdict}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
