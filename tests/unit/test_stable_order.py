"""What a role writes must not depend on the order of a Python set.

Ansible's set filters (union, difference, intersect, symmetric_difference) return their items in
the order of a Python set, which changes from one process to the next (string hashes are seeded
per process): a list made by one and written to a file reorders the file on some runs, a change
with nothing changed. Seen: nginx's allow lines for its internal sources, on every host with two
or more. Each use must sort its result or use only its length."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SET_FILTER = re.compile(r"\|\s*(union|difference|intersect|symmetric_difference)\b")
END = re.compile(r"\}\}|%\}")


def unordered_uses(text: str) -> list[str]:
    """The set filters of `text` whose expression neither sorts nor only counts the result."""
    found = []
    for match in SET_FILTER.finditer(text):
        end = END.search(text, match.end())
        rest = text[match.end() : end.start() if end else text.find("\n", match.end())]
        if not re.search(r"\|\s*(sort|length)\b", rest):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: {match.group(0)}")
    return found


def test_no_role_writes_a_set_filters_order():
    files = [
        *ROOT.glob("roles/*/templates/**/*.j2"),
        *ROOT.glob("roles/*/*/*.yml"),
        *ROOT.glob("playbooks/**/*.yml"),
        *ROOT.glob("templates/**/*.j2"),
    ]
    bad = {
        str(path.relative_to(ROOT)): uses
        for path in files
        if (uses := unordered_uses(path.read_text()))
    }
    assert bad == {}


def test_the_check_sees_an_unsorted_union_and_passes_a_sorted_one():
    assert unordered_uses("{% for s in a | union(b) %}") == ["line 1: | union"]
    assert unordered_uses("x: >-\n  {{ a\n     | difference(b) | list }}\n") != []
    assert unordered_uses("x: >-\n  {{ (a\n     | difference(b)) | sort }}\n") == []
    assert unordered_uses("- a | difference(b) | length == 0\n") == []


def test_the_set_filters_order_does_change_between_processes():
    """Why the rule exists: two processes with other hash seeds order the same union apart."""
    script = (
        "from ansible.plugins.filter.mathstuff import union;"
        "print(union(None, ['172.18.0.2', '172.18.0.3', '10.0.0.1', 'fd00::1'], []))"
    )
    orders = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(1, 9)
    }
    assert len(orders) > 1
