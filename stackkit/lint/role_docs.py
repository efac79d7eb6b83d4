#!/usr/bin/env python3
"""Write the role reference pages, docs/roles/<role>.md, from each role's argument specs.

ansible-core's own `ansible-doc -t role --json` reads meta/argument_specs.yml; this renders its
answer as Markdown, with each variable's default taken from the role's defaults/main.yml (the
specs carry none at the top level). The output depends on the roles alone: no date, no path of
the machine, no terminal width. `make docs` writes the pages; `make docs-check` (part of
`make lint`) writes them into a scratch directory and fails when they differ from docs/roles/.

Usage: python -m stackkit.lint.role_docs [--roles DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# Longest default shown inline; a longer one (or a nested one) is shown as a YAML block.
INLINE_MAX = 60
# A word that Markdown would read as emphasis or HTML is shown as code instead.
_WORD = re.compile(r"[\w.*<>/+-]+")
_MARKUP = re.compile(r"[_*<>]")


def ansible_doc(roles_dir: Path, names: list[str]) -> dict[str, Any]:
    """The argument specs of the named roles, as ansible-doc reads them."""
    exe = Path(sys.executable).with_name("ansible-doc")
    cmd = [str(exe) if exe.exists() else shutil.which("ansible-doc") or "ansible-doc"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", COLUMNS="100")
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        [*cmd, "-t", "role", "--json", "-r", str(roles_dir), *names],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"ansible-doc failed:\n{result.stderr}")
    return json.loads(result.stdout)


def text(description: str | list[str] | None, sep: str = "\n\n") -> str:
    """A description as Markdown: its paragraphs, with identifiers and markup as code."""
    if not description:
        return ""
    paragraphs = [description] if isinstance(description, str) else description
    return sep.join(" ".join(_code_words(p).split()) for p in paragraphs)


def _code_words(paragraph: str) -> str:
    # Backticked spans are already code; elsewhere wrap words holding _ * < > in backticks.
    parts = paragraph.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = _WORD.sub(_code_word, parts[i])
    return "`".join(parts)


def _code_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if not _MARKUP.search(word):
        return word
    core = word.rstrip(".-/")
    return f"`{core}`{word[len(core) :]}"


def flow(value: Any) -> str:
    """A value as YAML on one line, as a user writes it in group vars."""
    dumped = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


def code(value: str) -> str:
    fence = "``" if "`" in value else "`"
    pad = " " if "`" in value else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def kind(spec: dict[str, Any]) -> str:
    type_ = spec.get("type", "str")
    if type_ == "list" and spec.get("elements"):
        return f"`list` of `{spec['elements']}`"
    return f"`{type_}`"


def inline(default: Any, limit: float = INLINE_MAX) -> str | None:
    """A default short enough for one line, as YAML; None when it needs a block."""
    shown = flow(default)
    return shown if len(shown) <= limit else None


def facts(
    spec: dict[str, Any], default: Any, has_default: bool, limit: float = INLINE_MAX
) -> list[str]:
    """Type, required, choices and default of one option, as short phrases."""
    out = [kind(spec)]
    if spec.get("required"):
        out.append("required")
    choices = spec.get("choices")
    if choices:
        out.append("one of " + ", ".join(code(flow(c)) for c in choices))
    shown = inline(default, limit) if has_default else None
    if shown is not None:
        out.append(f"default {code(shown)}")
    if spec.get("no_log"):
        out.append("secret (`no_log`)")
    return out


def block(name: str, default: Any) -> list[str]:
    """A default too long for one line, as an indented YAML block."""
    dumped = yaml.safe_dump(
        {name: default}, default_flow_style=False, width=float("inf"), sort_keys=False
    )
    return ["", "  ```yaml", *(f"  {line}" for line in dumped.splitlines()), "  ```"]


def suboptions(options: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for name in sorted(options):
        spec = options[name]
        has_default = "default" in spec
        phrases = ", ".join(facts(spec, spec.get("default"), has_default, float("inf")))
        lines.append(f"{indent}- `{name}` ({phrases}): {text(spec.get('description'), ' ')}")
        if spec.get("options"):
            lines += suboptions(spec["options"], indent + "  ")
    return lines


def option(name: str, spec: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    has_default = name in defaults
    default = defaults.get(name)
    if not has_default and "default" in spec:
        has_default, default = True, spec["default"]
    lines = [f"### {name}", ""]
    described = text(spec.get("description"))
    if described:
        lines += [described, ""]
    lines += ["- " + "; ".join(facts(spec, default, has_default))]
    if has_default and inline(default) is None:
        lines += ["- default:", *block(name, default)]
    if spec.get("options"):
        each = "each element" if spec.get("type") == "list" else "keys"
        lines += [f"- {each}:", *suboptions(spec["options"], "  ")]
    return [*lines, ""]


def page(role: str, doc: dict[str, Any], defaults: dict[str, Any]) -> str:
    entry_points = doc["entry_points"]
    main = entry_points.get("main", {})
    lines = [
        f"<!-- Generated by `make docs` from roles/{role}/meta/argument_specs.yml and"
        f" roles/{role}/defaults/main.yml (ansible-doc -t role); do not edit. -->",
        "",
        f"# Role `{role}`",
        "",
        f"**{text(main.get('short_description')).rstrip('.')}.**",
        "",
    ]
    described = text(main.get("description"))
    if described:
        lines += [described, ""]
    lines += [
        f"What the role does and why: [the role notes](../roles.md#{role}). Variables below, with"
        f" the defaults of `roles/{role}/defaults/main.yml`.",
        "",
    ]
    for entry in sorted(e for e in entry_points if e != "main"):
        spec = entry_points[entry]
        options = ", ".join(f"[`{o}`](#{o})" for o in sorted(spec.get("options", {})))
        lines += [
            f"## Entry point `{entry}`",
            "",
            f"`tasks_from: {entry}`: {text(spec.get('short_description')).rstrip('.')}.",
            "",
        ]
        if spec.get("description"):
            lines += [text(spec["description"]), ""]
        if options:
            lines += [f"Variables: {options}.", ""]
    if main.get("options"):
        lines += ["## Variables", ""]
        for name in sorted(main["options"]):
            lines += option(name, main["options"][name], defaults)
    return "\n".join(lines).rstrip("\n") + "\n"


def render(roles_dir: Path) -> dict[str, str]:
    names = sorted(
        p.name for p in roles_dir.iterdir() if (p / "meta" / "argument_specs.yml").is_file()
    )
    docs = ansible_doc(roles_dir, names)
    pages = {}
    for role in names:
        defaults_file = roles_dir / role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else None
        pages[f"{role}.md"] = page(role, docs[role], defaults or {})
    return pages


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roles", type=Path, default=Path("roles"))
    parser.add_argument("--out", type=Path, default=Path("docs/roles"))
    args = parser.parse_args(argv)
    pages = render(args.roles)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(set(p.name for p in args.out.glob("*.md")) - set(pages)):
        (args.out / stale).unlink()
    for name, content in pages.items():
        (args.out / name).write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
