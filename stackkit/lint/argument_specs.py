"""Fail when a role's defaults and its meta/argument_specs.yml disagree.

Every public variable in defaults/main.yml must be documented (and so validated) in the
argument spec of the `main` entry point, and every option there must have a default.

Usage: python -m stackkit.lint.argument_specs [ROLES_DIR]   (default: roles)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def drift(role: Path) -> list[str]:
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    if not specs_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else None
    options = yaml.safe_load(specs_file.read_text())["argument_specs"]["main"].get("options", {})
    defaults = defaults or {}
    problems = [
        f"{role.name}: {name} is in defaults/main.yml but not in meta/argument_specs.yml"
        for name in sorted(set(defaults) - set(options))
    ]
    problems += [
        f"{role.name}: {name} is in meta/argument_specs.yml but has no default"
        for name in sorted(set(options) - set(defaults))
        if not options[name].get("required")
    ]
    problems += [
        f"{role.name}: {name} does not carry the role prefix {role.name}_"
        for name in sorted(defaults)
        if not name.startswith(f"{role.name}_")
    ]
    return problems


def main(argv: list[str]) -> int:
    roles_dir = Path(argv[1] if len(argv) > 1 else "roles")
    problems = [p for role in sorted(roles_dir.iterdir()) if role.is_dir() for p in drift(role)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
