"""The monitoring role's preflight refuses bad input before it changes anything, naming the
variable: a public listen address, a retention that Prometheus would not read, a port that is
no port, a receiver that is not defined, an inventory without monitor hosts, a tier exporter's
account that is no plain name, and a weak password for the Redis exporter on a host that runs
it.

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
        (
            "monitoring_node_exporter_textfile_directory",
            "var/lib/x",
            "monitoring_node_exporter_textfile_directory",
        ),
        (
            "monitoring_node_exporter_textfile_directory",
            "/var/lib/a b",
            "monitoring_node_exporter_textfile_directory",
        ),
        ("monitoring_alertmanager_receiver", "pager", "monitoring_alertmanager_receiver"),
        ("monitoring_server_group", "monitor", "monitoring_server_group"),
        ("monitoring_postgres_exporter_port", 0, "monitoring_postgres_exporter_port"),
        ("monitoring_postgres_exporter_role", "Exporter;", "monitoring_postgres_exporter_role"),
        ("monitoring_postgres_socket_dir", "run/postgresql", "monitoring_postgres_socket_dir"),
        ("monitoring_redis_exporter_port", 65536, "monitoring_redis_exporter_port"),
        ("monitoring_redis_exporter_user", "default", "monitoring_redis_exporter_user"),
        ("monitoring_elasticsearch_uri", "127.0.0.1:9200", "monitoring_elasticsearch_uri"),
        ("monitoring_rabbitmq_port", -1, "monitoring_rabbitmq_port"),
        # nginx serves stub_status on 127.0.0.1 only, on its own port.
        *(
            ("monitoring_nginx_stub_status_url", url, "monitoring_nginx_stub_status_url")
            for url in (
                "http://[::1]:8080/stub_status",
                "http://localhost:8080/stub_status",
                "http://127.0.0.1/stub_status",
                "http://10.0.0.5:8080/stub_status",
            )
        ),
        (
            "monitoring_rabbitmq_queue_growth_window",
            "15 minutes",
            "monitoring_rabbitmq_queue_growth_window",
        ),
    ],
    ids=lambda value: str(value),
)
def test_bad_input_is_refused_naming_the_variable(tmp_path, variable, value, named):
    result = run_preflight(tmp_path, "monitoring", {**GOOD, variable: value})
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text, "the refusal must come from the preflight"
    assert named in text, text[-2000:]


# The play's only host is in the implicit group `ungrouped`: as the Redis exporter's group, it
# makes localhost a host that runs the exporter.
REDIS_HOST = {**GOOD, "monitoring_redis_exporter_group": "ungrouped"}


def test_a_strong_redis_exporter_password_passes(tmp_path):
    good = {**REDIS_HOST, "monitoring_redis_exporter_password": "unit-test-only-exporter"}
    result = run_preflight(tmp_path, "monitoring", good)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("password", ["", "short", "replace-me-with-a-long-value"])
def test_a_weak_redis_exporter_password_is_refused_without_showing_it(tmp_path, password):
    result = run_preflight(
        tmp_path, "monitoring", {**REDIS_HOST, "monitoring_redis_exporter_password": password}
    )
    text = output(result)
    assert result.returncode != 0, text
    assert "monitoring_redis_exporter_password" in text, text[-2000:]
    if password:
        assert password not in text


def test_a_host_without_the_redis_exporter_needs_no_password(tmp_path):
    """The monitor host itself (not a cache host) runs with the default, empty password."""
    result = run_preflight(
        tmp_path, "monitoring", {**GOOD, "monitoring_redis_exporter_password": ""}
    )
    assert result.returncode == 0, output(result)


def test_redis_tls_without_a_ca_file_is_refused_naming_the_variable(tmp_path):
    result = run_preflight(
        tmp_path,
        "monitoring",
        {**GOOD, "monitoring_redis_tls_enabled": True, "monitoring_redis_tls_ca_certificate": ""},
    )
    text = output(result)
    assert result.returncode != 0, text
    assert "monitoring_redis_tls_ca_certificate" in text, text[-2000:]
