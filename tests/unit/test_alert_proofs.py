"""The alert proofs' pure parts. The outages `make chaos --alerts` holds can each fire their
alert: the alert is a rule the monitoring role writes, and a ServiceDown outage stops a unit the
node exporter watches (a unit outside monitoring_watched_services reports nothing, and its alert
could never fire). Labels match as Alertmanager's regular-expression matchers do, `make load`
reads its duration as Locust does, and fails on the alerts that fired during its run, not on
those already active when it began."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from stackkit import alerts
from stackkit.alerts import matches, raised, seconds
from stackkit.chaos import OUTAGES

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "monitoring"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
RULES = "".join(p.read_text() for p in (ROLE / "templates/etc/prometheus/rules").glob("*.j2"))


@pytest.mark.parametrize("name", sorted(OUTAGES))
def test_each_outage_names_a_rule_of_the_role(name):
    _, _, labels = OUTAGES[name]
    assert re.search(rf"- alert: {labels['alertname']}\n", RULES), labels["alertname"]


SERVICE_OUTAGES = sorted(n for n, (_, _, a) in OUTAGES.items() if a["alertname"] == "ServiceDown")


@pytest.mark.parametrize("name", SERVICE_OUTAGES)
def test_each_service_outage_stops_a_watched_unit_its_labels_match(name):
    _, unit, labels = OUTAGES[name]
    # postgresql.service stops the clusters' postgresql@ units, which the exporter reports.
    reported = "postgresql@17-main.service" if unit == "postgresql.service" else unit
    assert any(re.fullmatch(p, reported) for p in DEFAULTS["monitoring_watched_services"]), unit
    labels_seen = {"alertname": "ServiceDown", "name": reported}
    assert matches({"labels": labels_seen, "status": {"state": "active"}}, labels)


def test_labels_match_whole_values_of_active_alerts_only():
    alert = {"labels": {"alertname": "ServiceDown", "name": "redis-server.service"}}
    active = {**alert, "status": {"state": "active"}}
    assert matches(active, {"name": r"redis-server\.service"})
    assert not matches(active, {"name": "redis"})
    assert not matches(active, {"instance": "stack1"})
    assert not matches({**alert, "status": {"state": "suppressed"}}, {"alertname": "ServiceDown"})


@pytest.mark.parametrize(
    ("duration", "expected"), [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400)]
)
def test_load_durations_read_as_locust_writes_them(duration, expected):
    assert seconds(duration) == expected


@pytest.mark.parametrize("duration", ["", "5 minutes", "m5"])
def test_anything_else_is_no_duration(duration):
    with pytest.raises(argparse.ArgumentTypeError):
        seconds(duration)


REDIS_DOWN = {"alertname": "ServiceDown", "instance": "stack1", "name": "redis-server.service"}
NGINX_DOWN = {"alertname": "ServiceDown", "instance": "stack1", "name": "nginx.service"}
TARGET_DOWN = {"alertname": "TargetDown", "instance": "stack1", "job": "node"}


def series(labels: dict, state: str = "firing") -> dict:
    """An ALERTS series' labels, as Prometheus answers them."""
    return {"__name__": "ALERTS", "alertstate": state, **labels}


def test_alerts_active_when_the_run_began_are_not_counted_as_raised():
    before = [series(REDIS_DOWN), series(TARGET_DOWN, "pending")]
    fired = [series(REDIS_DOWN), series(TARGET_DOWN), series(NGINX_DOWN)]
    # The same alert name on the same host, for another unit, is another alert.
    assert raised(fired, before) == ["ServiceDown{instance=stack1,name=nginx.service}"]
    assert raised(fired[:2], before) == []
    assert raised(fired[:1], []) == ["ServiceDown{instance=stack1,name=redis-server.service}"]


class FakeManager:
    """Prometheus as stackkit.alerts asks it: its clock, what is active now, what fired."""

    def __init__(self, now: float, active: list[dict], fired: list[dict]):
        self.clock, self.active, self.fired = now, active, fired
        self.spans: list[float] = []

    def now(self) -> float:
        return self.clock

    def active_labels(self) -> list[dict]:
        return self.active

    def fired_within(self, seconds: float) -> list[dict]:
        self.spans.append(seconds)
        return self.fired


@pytest.fixture
def manager(monkeypatch):
    fake = FakeManager(1000.0, [series(REDIS_DOWN)], [])
    monkeypatch.setattr(alerts.Alertmanager, "of_inventory", classmethod(lambda cls, inv: fake))
    monkeypatch.setattr(alerts.time, "sleep", lambda seconds: None)
    return fake


def run_load(manager, tmp_path, fired: list[dict], seconds: float = 400.0) -> int:
    """record at the start, `seconds` of load on Prometheus's clock, then quiet."""
    start = tmp_path / "alerts-at-start.json"
    assert alerts.main(["record", "--inventory", "inv", "--out", str(start)]) == 0
    manager.clock += seconds
    manager.fired = fired
    return alerts.main(["quiet", "--inventory", "inv", "--since", str(start)])


def test_a_load_that_raises_nothing_passes_beside_an_alert_already_firing(
    manager, tmp_path, capsys
):
    assert run_load(manager, tmp_path, [series(REDIS_DOWN)]) == 0
    assert "1 already active at the start" in capsys.readouterr().out
    # The whole run and the wait after it, on Prometheus's clock.
    assert manager.spans == [400.0]


def test_a_load_that_raises_an_alert_fails_naming_it_only(manager, tmp_path, capsys):
    assert run_load(manager, tmp_path, [series(REDIS_DOWN), series(TARGET_DOWN)]) == 1
    err = capsys.readouterr().err
    assert "TargetDown{instance=stack1,job=node}" in err
    assert "redis-server" not in err


def test_without_a_record_the_window_counts_every_alert(manager, capsys):
    manager.fired = [series(REDIS_DOWN)]
    assert alerts.main(["quiet", "--inventory", "inv", "--window", "5m", "--wait", "30"]) == 1
    assert manager.spans == [330]


OUTBOX_OVERDUE = {"alertname": "CatalogueOutboxOverdue"}


class FaultyStack:
    """An Alertmanager whose alert is active from `fires_after` checks after the fault until
    `resolves_after` checks after the recovery (None: never)."""

    def __init__(self, fires_after: int | None = 1, resolves_after: int | None = 1):
        self.fires_after, self.resolves_after = fires_after, resolves_after
        self.phase, self.checks, self.steps = "before", 0, []

    def inject(self):
        self.steps.append("inject")
        self.phase, self.checks = "fault", 0

    def recover(self):
        self.steps.append("recover")
        self.phase, self.checks = "recovered", 0

    def firing(self, labels) -> bool:
        assert labels == OUTBOX_OVERDUE
        self.checks += 1
        if self.phase == "fault":
            return self.fires_after is not None and self.checks > self.fires_after
        if self.phase == "recovered":
            return self.resolves_after is None or self.checks <= self.resolves_after
        return False


def test_a_fault_proof_times_the_alert_firing_and_resolving():
    stack = FaultyStack(fires_after=2, resolves_after=2)
    times = alerts.prove_fault(
        stack, "a fault", stack.inject, stack.recover, [OUTBOX_OVERDUE], within=5, interval=0.01
    )
    fire, resolve = times["CatalogueOutboxOverdue"]
    assert stack.steps == ["inject", "recover"]
    assert 0.01 <= fire < 5
    assert 0.01 <= resolve < 5


def test_an_alert_that_never_fires_fails_the_proof_and_still_recovers():
    stack = FaultyStack(fires_after=None)
    with pytest.raises(alerts.AlertNotSeen, match="did not reach Alertmanager"):
        alerts.prove_fault(
            stack, "a fault", stack.inject, stack.recover, [OUTBOX_OVERDUE], 0.1, 0.01
        )
    assert stack.steps == ["inject", "recover"]


def test_an_alert_that_never_resolves_fails_the_proof():
    stack = FaultyStack(resolves_after=None)
    with pytest.raises(alerts.AlertNotSeen, match="still active"):
        alerts.prove_fault(
            stack, "a fault", stack.inject, stack.recover, [OUTBOX_OVERDUE], 0.1, 0.01
        )


def test_an_alert_active_before_the_fault_fails_the_proof_before_any_fault():
    stack = FaultyStack()
    stack.phase = "recovered"
    stack.resolves_after = None
    with pytest.raises(alerts.AlertNotSeen, match="active before the fault"):
        alerts.prove_fault(
            stack, "a fault", stack.inject, stack.recover, [OUTBOX_OVERDUE], 0.1, 0.01
        )
    assert stack.steps == []
