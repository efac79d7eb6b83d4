#!/usr/bin/env python3
"""Time a playbook against an inventory: a first run, then a no-op run, per strategy.

    python tests/bench/converge.py [--inventory inventories/local] [--playbook playbooks/site.yml]

Prints wall-clock seconds and the number of task results, for the stock linear strategy and,
when the optional mitogen package is installed, for mitogen_linear. Run it against hosts that
`make hosts-up` started; the first figure is a cold converge only on fresh hosts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def strategies() -> dict[str, dict[str, str]]:
    found = {"linear": {}}
    try:
        import ansible_mitogen  # noqa: PLC0415
    except ImportError:
        return found
    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    found["mitogen_linear"] = {
        "ANSIBLE_STRATEGY": "mitogen_linear",
        "ANSIBLE_STRATEGY_PLUGINS": str(plugins),
    }
    return found


def run(playbook: str, inventory: str, env: dict[str, str]) -> tuple[float, int, int]:
    started = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory, playbook],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"{playbook} failed:\n{proc.stdout[-3000:]}")
    recap = re.findall(r"ok=(\d+)\s+changed=(\d+)", proc.stdout)
    return elapsed, sum(int(ok) for ok, _ in recap), sum(int(ch) for _, ch in recap)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--playbook", default="playbooks/site.yml")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"{'strategy':<16}{'run':>4}{'seconds':>10}{'tasks':>8}{'changed':>9}")
    for name, env in strategies().items():
        for number in range(1, args.runs + 1):
            seconds, tasks, changed = run(args.playbook, args.inventory, env)
            print(f"{name:<16}{number:>4}{seconds:>10.1f}{tasks:>8}{changed:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
