"""Turn the benches' JSON into a Markdown report with plots (matplotlib), under build/bench/.

    python -m stackkit.bench.report [--dir build/bench]

Reads what `make bench` (converge.json), `make bench-app` (app.json, and app-*.json from runs
given a --label, e.g. before and after a change) and `make bench-deploy` (deploy-*.json) wrote in
that directory, skips what is missing, and writes report.md beside PNG plots: converge time per
tier against the floor, cold and no-op time per strategy, latency percentiles per endpoint,
requests a second and p95 over time, Elasticsearch's own rate against the web's and their ratio,
the ingest phases, and latency over time during a deploy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def save(fig, directory: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=110)
    plt.close(fig)
    return name


def converge_section(data: dict, directory: Path) -> list[str]:
    lines = ["## Converge", "", f"{data['date']}, {data['machine']}, one {data['suite']} host.", ""]
    floor = data.get("floor", {}).get("seconds")
    strategies = data["strategies"]
    lines += [
        "| strategy | cold s | cold / floor | no-op s | no-op / cold | no-op tasks | "
        "no-op changed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in strategies.items():
        ratio = f"{r['cold']['seconds'] / floor:.2f}" if floor else "-"
        lines.append(
            f"| {name} | {r['cold']['seconds']:.1f} | {ratio} | {r['noop']['seconds']:.1f} | "
            f"{r['noop']['seconds'] / r['cold']['seconds']:.3f} | {r['noop']['ok']} | "
            f"{r['noop']['changed']} |"
        )
    if floor:
        lines += [
            "",
            f"Floor (the same packages in one apt transaction, the same archives "
            f"unpacked, Elasticsearch started): **{floor:.1f} s**.",
        ]
    if data.get("mitogen") != "available":
        lines += ["", f"mitogen: {data.get('mitogen')}"]

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(strategies)
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x], [strategies[n]["cold"]["seconds"] for n in names], 0.4, label="cold"
    )
    ax.bar(
        [i + 0.2 for i in x], [strategies[n]["noop"]["seconds"] for n in names], 0.4, label="no-op"
    )
    if floor:
        ax.axhline(floor, color="black", linestyle="--", label=f"floor {floor:.0f} s")
        ax.axhline(1.5 * floor, color="grey", linestyle=":", label="goal: 1.5 x floor")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("seconds")
    ax.set_title("site.yml on a fresh host, per strategy")
    ax.legend()
    lines += ["", f"![per strategy]({save(fig, directory, 'converge-strategies.png')})"]

    first = next(iter(strategies.values()))
    roles = [r for r in first["cold"]["roles"] if r != "total"]
    if roles:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.barh(roles, [first["cold"]["roles"][r] for r in roles], label="cold")
        ax.barh(roles, [first["noop"]["roles"].get(r, 0) for r in roles], label="no-op")
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(
            f"time per tier (role), {names[0]}" + (f"; floor {floor:.0f} s" if floor else "")
        )
        ax.legend()
        lines += ["", f"![per tier]({save(fig, directory, 'converge-tiers.png')})"]
    lines += ["", f"Slowest tasks of the no-op run ({names[0]}):", ""]
    lines += [f"- {s:.2f} s {t}" for t, s in first["noop"]["slowest"][:10]]
    return [*lines, ""]


def before_after_section(before: dict, after: dict, directory: Path) -> list[str]:
    """The same bench before and after a change (converge-before.json beside converge.json)."""
    names = [n for n in after["strategies"] if n in before["strategies"]]
    lines = [
        "### Before and after",
        "",
        f"Before: {before['date']}; after: {after['date']}.",
        "",
        "| strategy | cold before | cold after | no-op before | no-op after |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        b, a = before["strategies"][n], after["strategies"][n]
        lines.append(
            f"| {n} | {b['cold']['seconds']:.1f} | {a['cold']['seconds']:.1f} | "
            f"{b['noop']['seconds']:.1f} | {a['noop']['seconds']:.1f} |"
        )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x],
        [before["strategies"][n]["noop"]["seconds"] for n in names],
        0.4,
        label="no-op before",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [after["strategies"][n]["noop"]["seconds"] for n in names],
        0.4,
        label="no-op after",
    )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("seconds")
    ax.set_title("no-op site.yml per strategy, before and after")
    ax.legend()
    return [
        *lines,
        "",
        f"![before and after]({save(fig, directory, 'converge-before-after.png')})",
        "",
    ]


def app_section(runs: dict[str, dict], directory: Path) -> list[str]:
    lines = ["## The app through nginx", ""]
    for label, data in runs.items():
        lines += [
            f"### {label}",
            "",
            f"{data['date']}, {data['machine']}, {data['users']} users, "
            f"{data['duration']} s per endpoint.",
            "",
            "| endpoint | req/s | p50 ms | p95 ms | p99 ms | max ms | non-2xx | load1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in data["endpoints"].items():
            lines.append(
                f"| {name} | {s['rps']:.0f} | {s['p50']:.0f} | {s['p95']:.0f} | "
                f"{s['p99']:.0f} | {s['max']:.0f} | {s['non_2xx']} | {s.get('load1', '-')} |"
            )
        if data.get("wrk"):
            lines += wrk_lines(data["wrk"])
        lines += ingest_lines(data)
        for key in ("post_to_stored", "post_to_searchable"):
            if key in data:
                r = data[key]
                lines.append(
                    f"\n{key.replace('_', ' ').replace('post', 'POST')}: n={r['n']}, "
                    f"p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s"
                )
        lines.append("")

    fig, ax = plt.subplots(figsize=(9, 4.8))
    endpoints = list(next(iter(runs.values()))["endpoints"])
    width = 0.8 / (3 * len(runs))
    for k, (label, data) in enumerate(runs.items()):
        for j, p in enumerate(("p50", "p95", "p99")):
            offset = (k * 3 + j) * width - 0.4 + width / 2
            ax.bar(
                [i + offset for i in range(len(endpoints))],
                [data["endpoints"].get(e, {}).get(p, 0) for e in endpoints],
                width,
                label=f"{label} {p}",
            )
    ax.set_xticks(range(len(endpoints)), endpoints)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("latency percentiles per endpoint")
    ax.legend(fontsize="small", ncol=len(runs), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    lines += [f"![latency]({save(fig, directory, 'app-latency.png')})", ""]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    label, data = next(reversed(runs.items()))
    for name, s in data["endpoints"].items():
        if s["history"]:
            t = [h[0] for h in s["history"]]
            top.plot(t, [h[1] for h in s["history"]], label=name)
            bottom.plot(t, [h[2] for h in s["history"]], label=name)
    top.set_ylabel("req/s")
    bottom.set_ylabel("p95 ms (Locust, recent window)")
    bottom.set_xlabel("seconds into the phase")
    top.set_title(f"over time, {label}")
    top.legend(fontsize="small")
    lines += [f"![over time]({save(fig, directory, 'app-over-time.png')})", ""]
    return lines


def wrk_lines(data: dict) -> list[str]:
    """Elasticsearch's own rate for the app's bodies and the web's for the same requests."""
    lines = [
        "",
        f"Elasticsearch alone on {data['search_host']} against the web through nginx, wrk with"
        f" {data['connections']} connections for {data['duration']} s each (a search is the"
        " app's phrase round and, when it finds nothing, its term round):",
        "",
        "| endpoint | ES req/s | ES p50 ms | ES p99 ms | web req/s | web p50 ms | web p99 ms "
        "| web / ES | load1 ES, web |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in data["endpoints"].items():
        es, web = f["es"], f["web"]
        ratio = f"{f['ratio']:.1%}" if f["ratio"] is not None else "-"
        lines.append(
            f"| {name} | {es['rps']:.0f} | {es['p50']:.1f} | {es['p99']:.1f} | {web['rps']:.0f} "
            f"| {web['p50']:.1f} | {web['p99']:.1f} | {ratio} | {es['load1']}, {web['load1']} |"
        )
    return lines


def ingest_lines(data: dict) -> list[str]:
    """Products through the API until stored with their history and searchable."""
    runs = {k: data[k] for k in ("ingest", "ingest_paced", "ingest_singles") if data.get(k)}
    if not runs:
        return []

    def show(value, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        "",
        "| ingest | products | per POST | offered /s | accepted /s | POST p99 ms | stored s "
        "| searchable s | end to end /s | POST -> searchable p50 s | p95 s | load1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {r['products']} | {r['batch_size']} "
            f"| {r['rate'] or 'flat out'} | {r['accepted_per_s']} | {r['post_p99_ms']} "
            f"| {show(r['stored_s'])} | {show(r['searchable_s'])} "
            f"| {show(r['end_to_end_per_s'])} | {show(r['searchable_p50_s'], 2)} "
            f"| {show(r['searchable_p95_s'], 2)} | {r['load1']} |"
        )
    return lines


def deploy_section(runs: dict[str, dict], directory: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    lines = ["## During a deploy", ""]
    for driver, data in runs.items():
        t = [h[0] for h in data["history"]]
        ax.plot(t, [h[2] for h in data["history"]], label=f"{driver} p95")
        lines.append(
            f"- {driver}: deploy {data['seconds']:.0f} s, {data['requests']} requests, "
            f"{data['non_2xx']} non-2xx, p99 {data['p99']} ms"
        )
    ax.set_xlabel("seconds since the deploy started")
    ax.set_ylabel("ms")
    ax.set_title("latency while a release is deployed")
    ax.legend()
    return [*lines, "", f"![deploy]({save(fig, directory, 'deploy-latency.png')})", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args(argv)
    directory = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["# stackkit performance report", ""]
    converge = load(directory / "converge.json")
    if converge:
        lines += converge_section(converge, directory)
        before = load(directory / "converge-before.json")
        if before:
            lines += before_after_section(before, converge, directory)
    app_runs = {
        (json.loads(p.read_text()).get("label") or "latest"): json.loads(p.read_text())
        for p in sorted(directory.glob("app*.json"), key=lambda p: p.stat().st_mtime)
    }
    if app_runs:
        lines += app_section(app_runs, directory)
    deploys = {
        p.stem.removeprefix("deploy-"): json.loads(p.read_text())
        for p in sorted(directory.glob("deploy-*.json"))
    }
    if deploys:
        lines += deploy_section(deploys, directory)
    if len(lines) == 2:
        sys.exit(f"nothing to report: run make bench / bench-app first ({directory})")
    report = directory / "report.md"
    report.write_text("\n".join(lines))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
