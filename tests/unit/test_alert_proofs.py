"""The alert proofs' pure parts. The outages `make chaos --alerts` holds can each fire their
alert: the alert is a rule the monitoring role writes, and a ServiceDown outage stops a unit the
node exporter watches (a unit outside monitoring_watched_services reports nothing, and its alert
could never fire). Labels match as Alertmanager's regular-expression matchers do, and `make
load` reads its duration as Locust does."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from stackkit.alerts import matches, seconds
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
