"""Constant load through nginx while a new release is deployed: does any request fail?

    python -m stackkit.bench.deploy [--url https://127.0.0.1:8443] [--driver ansible,fab]
                                 [--users 10] [--inventory inventories/local]

For each driver, a copy of app/ with a changed stylesheet is deployed (a real release switch:
every process of the app restarts) while Locust (tests/load/locustfile.py: page, autocomplete,
search and new products) keeps USERS users busy. Locust runs exactly as long as the deploy.
Prints, per driver: requests made, non-2xx, p99 latency, the deploy's own time, whether nginx
serves the new release's stylesheet afterwards and how many of the products accepted during
the run were never stored; exits 1 when a deploy failed, any request got a non-2xx answer, no
request or product was made, the new release is not what nginx serves, or a product accepted
during the switch was lost. Destructive: it deploys and adds products.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin

from stackkit import site_client  # the suites' shared client: the demo's address

ROOT = Path(__file__).resolve().parents[2]
STYLESHEET = Path("catalogue/static/catalogue/catalogue.css")  # under app/
WARMUP = 5  # seconds of load before the deploy starts, so that every user is running


def changed_checkout(directory: Path) -> Path:
    """A copy of app/ that differs from the live release by one comment."""
    checkout = directory / "app"
    shutil.copytree(
        ROOT / "app", checkout, ignore=shutil.ignore_patterns(".venv", "__pycache__", "staticfiles")
    )
    css = checkout / STYLESHEET
    css.write_text(css.read_text() + f"/* bench {checkout_marker(checkout)} */\n")
    return checkout


def checkout_marker(checkout: Path) -> str:
    """What the changed stylesheet says, and so what nginx serves once the release is live."""
    marker = checkout.parent / "marker"
    if not marker.exists():
        marker.write_text(uuid.uuid4().hex)
    return marker.read_text()


def release_live(url: str, marker: str) -> bool:
    """The page through nginx links the stylesheet of the release that carries `marker`."""
    http = site_client.session()
    page = http.get(f"{url}/", timeout=10)
    link = re.search(r'<link rel="stylesheet" href="([^"]+)"', page.text)
    if page.status_code != 200 or not link:
        return False
    return marker in http.get(urljoin(f"{url}/", link.group(1)), timeout=10).text


def unstored(url: str, accepted: Path, timeout: float = 120) -> list[str]:
    """The products the API accepted (202) during the run that are not stored within
    `timeout` (the workers may still be draining the queue): none, when the promise holds."""
    http = site_client.session()
    waiting = set(accepted.read_text().split()) if accepted.exists() else set()
    deadline = time.monotonic() + timeout
    while waiting:
        waiting = {
            i for i in waiting if http.get(f"{url}/api/products/{i}", timeout=10).status_code != 200
        }
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(1)
    return sorted(waiting)


def deploy_command(driver: str, checkout: Path, inventory: str) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if driver == "ansible":
        return [str(bin_dir / "ansible-playbook"), "-i", inventory, "playbooks/deploy.yml",
                "-e", f"app_source_dir={checkout}"]  # fmt: skip
    return [str(bin_dir / "fab"), "deploy", "--source", str(checkout), "--inventory", inventory]


def aggregated(prefix: Path) -> dict[str, str]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")


def write_json(driver: str, prefix: Path, stats: dict[str, str], seconds: float) -> None:
    """build/bench/deploy-DRIVER.json for `make bench-report`: the figures and, a second at a
    time from the deploy's start, requests a second and p95 latency."""
    with open(f"{prefix}_stats_history.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    start = int(rows[0]["Timestamp"]) + WARMUP if rows else 0
    history = [
        (int(r["Timestamp"]) - start, float(r["Requests/s"]), float(r["95%"]))
        for r in rows
        if r["95%"] not in ("", "N/A")
    ]
    out = ROOT / "build" / "bench" / f"deploy-{driver}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "seconds": round(seconds, 1),
                "requests": int(stats["Request Count"]),
                "non_2xx": int(stats["Failure Count"]),
                "p99": stats["99%"],
                "history": history,
            },
            indent=2,
        )
    )


def run_once(driver: str, args: argparse.Namespace, directory: Path) -> bool:
    checkout = changed_checkout(directory / driver)
    prefix = directory / f"{driver}-load"
    accepted = directory / f"{driver}-accepted"
    locust = subprocess.Popen(
        [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "tests/load/locustfile.py"),
         "--headless", "--host", args.url, "--users", str(args.users),
         "--spawn-rate", str(args.users), "--run-time", "30m", "--csv", str(prefix),
         "--csv-full-history",
         "--only-summary", "--loglevel", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "STACKKIT_API_TOKEN": site_client.api_token(args.inventory),
             "STACKKIT_ACCEPTED_LOG": str(accepted)},
    )  # fmt: skip
    time.sleep(WARMUP)  # Locust starts its users; the deploy must begin under full load
    started = time.monotonic()
    log = directory / f"{driver}-deploy.log"
    with open(log, "w") as out:
        deployed = subprocess.run(
            deploy_command(driver, checkout, args.inventory), cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT, check=False, timeout=1800,
        )  # fmt: skip
    seconds = time.monotonic() - started
    locust.send_signal(signal.SIGTERM)
    locust.communicate(timeout=60)
    stats = aggregated(prefix)
    failures, requests = int(stats["Failure Count"]), int(stats["Request Count"])
    live = release_live(args.url, checkout_marker(checkout))
    posted = len(accepted.read_text().split()) if accepted.exists() else 0
    lost = unstored(args.url, accepted)
    print(
        f"{driver:8} deploy {'ok' if deployed.returncode == 0 else 'FAILED'} in {seconds:.0f} s;"
        f" requests {requests}, non-2xx {failures}, p99 {stats['99%']} ms"
        f" (p50 {stats['50%']} ms, max {float(stats['Max Response Time']):.0f} ms);"
        f" new release live {'yes' if live else 'NO'}; products accepted {posted},"
        f" not stored {len(lost)}",
        flush=True,
    )
    if lost:
        print(f"  accepted and never stored: {', '.join(lost[:20])}")
    write_json(driver, prefix, stats, seconds)
    if deployed.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
    if failures:
        with open(f"{prefix}_failures.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                print(f"  {row['Occurrences']} x {row['Method']} {row['Name']}: {row['Error']}")
    # A run that made no request, or wrote nothing, or whose release never went live, proves
    # nothing about a switch under load.
    return (
        deployed.returncode == 0 and failures == 0 and requests > 0 and live and posted > 0
        and not lost
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=site_client.DEMO_URL)
    parser.add_argument("--driver", default="ansible,fab", help="ansible, fab or both")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--inventory", default=os.environ.get("INVENTORY", "inventories/local"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        results = [run_once(d, args, Path(tmp)) for d in args.driver.split(",")]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
