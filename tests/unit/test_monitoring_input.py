"""The monitoring role's preflight refuses bad input before it changes anything, naming the
variable: a public listen address, a retention that Prometheus would not read, a port that is
no port, a receiver that is not defined, an inventory without monitor hosts.

The preflight runs on the controller (tests/unit/preflight.py), in check mode and limited to
the preflight tag."""

from __future__ import annotations

import pytest
from preflight import output, run_preflight

# The play's only host, localhost, stands for the monitor host.
GOOD = {"monitoring_server_group": "all"}


def test_good_input_passes(tmp_path):
    result = run_preflight(tmp_path, "monitoring", GOOD)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("monitoring_listen_address", "9.9.9.9", "monitoring_allow_public_bind"),
        ("monitoring_listen_address", "monitor.example", "monitoring_listen_address"),
        ("monitoring_retention_size", "2 gigs", "monitoring_retention_size"),
        ("monitoring_retention_time", "two weeks", "monitoring_retention_time"),
        ("monitoring_down_for", "60", "monitoring_down_for"),
        ("monitoring_node_exporter_port", 70000, "monitoring_node_exporter_port"),
        ("monitoring_alertmanager_receiver", "pager", "monitoring_alertmanager_receiver"),
        ("monitoring_server_group", "monitor", "monitoring_server_group"),
    ],
    ids=lambda value: str(value),
)
def test_bad_input_is_refused_naming_the_variable(tmp_path, variable, value, named):
    result = run_preflight(tmp_path, "monitoring", {**GOOD, variable: value})
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text, "the refusal must come from the preflight"
    assert named in text, text[-2000:]
