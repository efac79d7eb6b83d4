#!/usr/bin/env python3
"""Fail on a Markdown link to a file or heading that does not exist.

Every relative link of every tracked Markdown file must name an existing file and, after a `#`,
a heading of it (GitHub's anchors: lower case, punctuation dropped, spaces as dashes).
Links to other sites are not followed.

Usage: python -m stackkit.lint.doc_links [FILE.md ...]   (default: every tracked *.md)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def anchors(path: Path) -> set[str]:
    slugs: dict[str, int] = {}
    found = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n = slugs.get(slug, 0)
        slugs[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken(path: Path) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
        if not dest.exists():
            problems.append(f"{path}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path}: {target}: no such heading")
    return problems


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or [
        Path(p)
        for p in subprocess.run(
            ["git", "ls-files", "*.md"], capture_output=True, text=True, check=True
        ).stdout.split()
    ]
    problems = [p for f in files for p in broken(f)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
