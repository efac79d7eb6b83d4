"""The role reference pages: written from the argument specs and defaults, the same anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SPECS = """\
---
argument_specs:
  main:
    short_description: A demo role
    description:
      - Writes <name>.conf for every *_demo_* host.
    options:
      demo_port:
        type: int
        description: TCP port.
      demo_password:
        type: str
        required: true
        no_log: true
        description: From the vault.
      demo_users:
        type: list
        elements: dict
        description: Users.
        options:
          name:
            type: str
            required: true
            description: User name.
          flags:
            type: str
            default: LOGIN
            description: Attributes.
  reset:
    short_description: Start over
    options:
      demo_port:
        type: int
        description: TCP port.
"""

DEFAULTS = """\
---
demo_port: 8080
demo_users:
  - name: alice
  - name: bob
  - name: a-user-with-a-rather-long-name-so-the-default-needs-a-block
"""


def write_pages(roles: Path, out: Path, **env: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "stackkit.lint.role_docs", "--roles", str(roles), "--out", str(out)],
        check=True,
        cwd=roles.parent,
        env={**os.environ, **env},
    )
    return (out / "demo.md").read_text()


def make_role(tmp_path: Path) -> Path:
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(SPECS)
    (role / "defaults" / "main.yml").write_text(DEFAULTS)
    return role.parent


def test_the_page_shows_each_variable_with_its_default_from_the_defaults_file(tmp_path):
    page = write_pages(make_role(tmp_path), tmp_path / "out")
    assert "### demo_port\n\nTCP port.\n\n- `int`; default `8080`" in page
    assert "- `str`; required; secret (`no_log`)" in page
    # A default too long for one line is a YAML block; sub-options keep their own defaults.
    assert "  demo_users:\n  - name: alice\n" in page
    assert "  - `flags` (`str`, default `LOGIN`): Attributes." in page
    assert "## Entry point `reset`" in page


def test_words_markdown_would_misread_are_code(tmp_path):
    page = write_pages(make_role(tmp_path), tmp_path / "out")
    assert "Writes `<name>.conf` for every `*_demo_*` host." in page


def test_the_page_is_the_same_whatever_the_terminal_and_names_no_local_path(tmp_path):
    roles = make_role(tmp_path)
    plain = write_pages(roles, tmp_path / "a", COLUMNS="200", ANSIBLE_NOCOLOR="1")
    coloured = write_pages(roles, tmp_path / "b", COLUMNS="20", ANSIBLE_FORCE_COLOR="1")
    assert plain == coloured
    assert str(tmp_path) not in plain


def test_a_page_of_a_removed_role_is_deleted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gone.md").write_text("old\n")
    write_pages(make_role(tmp_path), out)
    assert sorted(p.name for p in out.iterdir()) == ["demo.md"]
