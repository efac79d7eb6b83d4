"""Alerts proven by faults: stop a unit, see the matching alert reach Alertmanager, start it,
see the alert resolved; with the time each took. Shared by the monitoring suite
(tests/infra/test_monitoring.py) and `make chaos --alerts` (stackkit/chaos.py).

Alertmanager is asked from a monitor host itself, over its private address, as its operator
would: the firewall admits no one else."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# An alert reaches Alertmanager within this many seconds of the fault, and is resolved within as
# many of the recovery.
ALERT_WITHIN = 90

_GET = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    print(answer.read().decode())
"""


class AlertNotSeen(AssertionError):
    """An alert did not fire, or did not resolve, in time."""


def get_json(host, url: str):
    """GET a JSON API from `host` (a testinfra host) itself."""
    return json.loads(host.check_output("python3 -c %s %s", _GET, url))


def wait_for(condition: Callable[[], bool], timeout: float = 30, interval: float = 0.5) -> bool:
    """Whether `condition` holds within `timeout` seconds, asked every `interval`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def matches(alert: Mapping, labels: Mapping[str, str]) -> bool:
    """An active alert whose every label in `labels` matches, each value a regular expression
    over the whole label (as Alertmanager's `=~` matchers read it)."""
    got = alert.get("labels", {})
    return alert.get("status", {}).get("state") == "active" and all(
        re.fullmatch(pattern, got.get(key, "")) for key, pattern in labels.items()
    )


# Labels of Prometheus's ALERTS series that are not the alert's own.
_SERIES_LABELS = frozenset(("__name__", "alertstate"))


def identity(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """An alert as Prometheus tells it apart: its labels, without the series' own."""
    return tuple(sorted((k, v) for k, v in labels.items() if k not in _SERIES_LABELS))


def describe(labels: Mapping[str, str]) -> str:
    """alertname{label=value,...}, every label of the alert but its name."""
    rest = ",".join(f"{k}={v}" for k, v in identity(labels) if k != "alertname")
    return f"{labels.get('alertname', '')}{{{rest}}}"


def raised(fired: Iterable[Mapping[str, str]], before: Iterable[Mapping[str, str]]) -> list[str]:
    """The alerts of `fired` that were not already active (pending or firing) in `before`, the
    alerts seen when the run began: those the run raised."""
    known = {identity(labels) for labels in before}
    return sorted({describe(labels) for labels in fired if identity(labels) not in known})


@dataclass
class Alertmanager:
    """The Alertmanager of a monitor host (a testinfra host), at `address`:`port`, and that
    host's Prometheus at `prometheus_port`."""

    host: object
    address: str
    port: int
    prometheus_port: int = 9090

    @classmethod
    def of_inventory(cls, inventory: str) -> Alertmanager:
        """The first monitor host's; SystemExit when the inventory has no monitor group."""
        import testinfra  # noqa: PLC0415 - the tooling's verify extra

        from stackkit.inventory import PlayVars  # noqa: PLC0415

        plays = PlayVars(inventory, vault=False)
        names = plays.hostnames("monitor")
        if not names:
            raise SystemExit(f"{inventory} has no monitor group: nothing to ask about alerts")
        name = names[0]
        host = testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)

        def value(variable: str) -> int:
            return int(plays.value(name, variable, role="monitoring"))

        return cls(
            host,
            str(plays.render(name, "private_address", facts=False)),
            value("monitoring_alertmanager_port"),
            value("monitoring_prometheus_port"),
        )

    def _url(self, port: int, path: str) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{port}{path}"

    def alerts(self) -> list[dict]:
        """The alerts it holds now (resolved ones are not listed)."""
        return get_json(self.host, self._url(self.port, "/api/v2/alerts"))

    def query(self, expression: str) -> dict:
        """An instant query of this host's Prometheus: its `data`."""
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        return get_json(self.host, self._url(self.prometheus_port, path))["data"]

    def now(self) -> float:
        """Prometheus's own time (the monitor host's clock), in seconds."""
        return float(self.query("time()")["result"][0])

    def active_labels(self) -> list[dict]:
        """The labels of every alert Prometheus has pending or firing now."""
        return [r["metric"] for r in self.query("ALERTS")["result"]]

    def fired_within(self, seconds: float) -> list[dict]:
        """The labels of every alert Prometheus had firing at any evaluation of the last
        `seconds`."""
        data = self.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{int(seconds)}s])')
        return [r["metric"] for r in data["result"]]

    def firing(self, labels: Mapping[str, str]) -> bool:
        return any(matches(alert, labels) for alert in self.alerts())

    def active_names(self) -> list[str]:
        return sorted(
            f"{a['labels'].get('alertname')}{{instance={a['labels'].get('instance', '')}}}"
            for a in self.alerts()
            if a.get("status", {}).get("state") == "active"
        )


def prove(
    manager: Alertmanager,
    victim,
    unit: str,
    label_sets: Sequence[Mapping[str, str]],
    within: float = ALERT_WITHIN,
) -> dict[str, tuple[float, float]]:
    """Stop `unit` on `victim` (a testinfra host): each alert with one of `label_sets` must
    reach Alertmanager within `within` s; start it again: each must be resolved within `within`
    s. Returns (seconds to fire, seconds to resolve) by alert name. The unit is started again
    whatever happens."""
    return prove_fault(
        manager,
        f"{unit} stopped on {victim.backend.host}",
        lambda: victim.check_output("systemctl stop %s", unit),
        lambda: victim.check_output("systemctl start %s", unit),
        label_sets,
        within,
    )


def prove_fault(
    manager: Alertmanager,
    fault: str,
    inject: Callable[[], object],
    recover: Callable[[], object],
    label_sets: Sequence[Mapping[str, str]],
    within: float = ALERT_WITHIN,
    interval: float = 1.0,
) -> dict[str, tuple[float, float]]:
    """Any fault: once `inject` has returned, each alert with one of `label_sets` must reach
    Alertmanager within `within` s; once `recover` has returned, each must be resolved within
    `within` s. None may be active before. Returns (seconds to fire, seconds to resolve) by
    alert name, timed with a monotonic clock. `recover` runs whatever happens once `inject`
    has begun."""
    for labels in label_sets:
        if not wait_for(lambda labels=labels: not manager.firing(labels), within, interval):
            raise AlertNotSeen(f"{dict(labels)} is active before the fault")
    fired_after: dict[str, float] = {}
    try:
        inject()
        injected = time.monotonic()
        for labels in label_sets:
            left = max(interval, within - (time.monotonic() - injected))
            if not wait_for(lambda labels=labels: manager.firing(labels), left, interval):
                raise AlertNotSeen(
                    f"{fault}: {dict(labels)} did not reach Alertmanager in {within} s"
                )
            fired_after[labels["alertname"]] = time.monotonic() - injected
    finally:
        recover()
    recovered = time.monotonic()
    times = {}
    for labels in label_sets:
        left = max(interval, within - (time.monotonic() - recovered))
        if not wait_for(lambda labels=labels: not manager.firing(labels), left, interval):
            raise AlertNotSeen(
                f"{fault}: {dict(labels)} still active {within} s after the recovery"
            )
        name = labels["alertname"]
        times[name] = (fired_after[name], time.monotonic() - recovered)
    return times


def seconds(duration: str) -> int:
    """Locust's and Prometheus's durations: 90, 90s, 5m, 1h30m."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", duration.strip())
    if not duration.strip() or not parts:
        raise argparse.ArgumentTypeError(f"not a duration: {duration!r}")
    hours, minutes, secs = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def record(manager: Alertmanager, out: Path) -> dict:
    """What `quiet --since` needs of the start of a run: Prometheus's time and the alerts
    already active (pending or firing), written to `out`."""
    start = {"time": manager.now(), "active": manager.active_labels()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(start, indent=2, sort_keys=True) + "\n")
    return start


def quiet(manager: Alertmanager, wait: float, window: float | None, start: dict | None) -> int:
    """Waits `wait` s (an alert fires a while after its cause), then exits 1 if an alert fired
    since the run began (`start`, as `record` wrote it; else in the last `window` s) or during
    that wait, one already active when the run began aside."""
    time.sleep(wait)
    span = manager.now() - start["time"] if start else window + wait
    new = raised(manager.fired_within(span), start["active"] if start else [])
    if new:
        print(f"alerts fired in the last {span:.0f} s: {', '.join(new)}", file=sys.stderr)
        return 1
    known = len(start["active"]) if start else 0
    print(f"no alert fired in the last {span:.0f} s ({known} already active at the start)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """What `make load` runs around its load:
    `python -m stackkit.alerts record --inventory INV --out FILE` before it, and
    `python -m stackkit.alerts quiet --inventory INV --since FILE` after it, which fails on an
    alert that fired during the run (or `--window 5m`: in the last 5 minutes) and was not
    already active at its start."""
    parser = argparse.ArgumentParser(description="alerts of an inventory's monitor host")
    parser.add_argument("check", choices=["record", "quiet"])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--out", type=Path, help="record: where to write the start")
    parser.add_argument("--since", type=Path, help="quiet: the start that record wrote")
    parser.add_argument("--window", type=seconds, help="quiet without --since: e.g. 300, 5m")
    parser.add_argument("--wait", type=seconds, default=ALERT_WITHIN)
    parser.add_argument(
        "--if-monitored", action="store_true", help="pass an inventory without a monitor group"
    )
    args = parser.parse_args(argv)
    if args.check == "record" and not args.out:
        parser.error("record needs --out")
    if args.check == "quiet" and not (args.since or args.window):
        parser.error("quiet needs --since (what record wrote) or --window")
    if args.if_monitored:
        from stackkit.inventory import PlayVars  # noqa: PLC0415

        if not PlayVars(args.inventory, vault=False).hostnames("monitor"):
            print(f"{args.inventory} has no monitor group: no alerts to check")
            return 0
    manager = Alertmanager.of_inventory(args.inventory)
    if args.check == "record":
        start = record(manager, args.out)
        names = ", ".join(sorted(describe(labels) for labels in start["active"])) or "none"
        print(f"alerts active at the start: {names}")
        return 0
    start = json.loads(args.since.read_text()) if args.since else None
    return quiet(manager, args.wait, args.window, start)


if __name__ == "__main__":
    sys.exit(main())
