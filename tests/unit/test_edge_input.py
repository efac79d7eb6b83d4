"""The nginx and app roles refuse a bad edge configuration before changing anything, naming the
variable: TLS half given, a site without names, a load balancer without addresses, rates nginx
cannot read, API tokens that are short, nameless or twice named.

The roles' preflights run on the controller (tests/unit/preflight.py)."""

from __future__ import annotations

import pytest
from preflight import run_preflight

TOKEN = "unit-test-only-api-token-0123456789abcdef"
APP = {
    "app_secret_key": "unit-test-only-" + "k" * 40,
    "app_postgres_password": "unit-test-only-postgres",
    "app_redis_password": "unit-test-only-redis",
    "app_rabbitmq_password": "unit-test-only-rabbitmq",
    "app_mongodb_password": "unit-test-only-mongodb",
    "app_postgres_owner_user": "owner",
    "app_postgres_owner_password": "unit-test-only-owner",
    "app_image_fetch_deny": ["10.0.2.11", "10.0.3.0/24"],
}


def test_good_edge_input_passes_both_preflights(tmp_path):
    nginx = run_preflight(tmp_path, "nginx", {"nginx_server_names": ["shop.example.com"]})
    assert nginx.returncode == 0, nginx.stdout + nginx.stderr
    app = run_preflight(
        tmp_path, "app", {**APP, "app_api_tokens": [{"name": "importer", "token": TOKEN}]}
    )
    assert app.returncode == 0, app.stdout + app.stderr


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"nginx_server_names": []}, "nginx_server_names"),
        ({"nginx_server_names": ["_"]}, "nginx_server_names"),
        ({"nginx_tls_certificate": "-----BEGIN CERTIFICATE-----\n"}, "nginx_tls_certificate"),
        ({"nginx_tls_ca_certificate_path": "/tmp/ca.pem"}, "nginx_tls_ca_certificate_path"),
        ({"nginx_behind_load_balancer": True}, "nginx_load_balancer_addresses"),
        ({"nginx_limit_write_rate": "fast"}, "nginx_limit_write_rate"),
        ({"nginx_tls_port": 80}, "nginx_tls_port"),
        ({"nginx_tls_backdate_hours": 0}, "nginx_tls_backdate_hours"),
    ],
    ids=[
        "no names",
        "catch-all",
        "key missing",
        "ca key missing",
        "balancer",
        "rate",
        "ports",
        "no backdate",
    ],
)
def test_nginx_refuses_a_bad_edge(tmp_path, variables, named):
    result = run_preflight(tmp_path, "nginx", variables)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("tokens", "shown"),
    [
        ([{"name": "importer", "token": "short"}], "app_api_tokens"),
        ([{"token": TOKEN}], "app_api_tokens"),
        ([{"name": "a b", "token": TOKEN}], "app_api_tokens"),
        ([{"name": "x", "token": TOKEN}, {"name": "x", "token": TOKEN + "2"}], "app_api_tokens"),
    ],
    ids=["short", "nameless", "bad name", "twice named"],
)
def test_app_refuses_bad_api_tokens_without_showing_them(tmp_path, tokens, shown):
    result = run_preflight(tmp_path, "app", {**APP, "app_api_tokens": tokens})
    assert result.returncode != 0
    assert shown in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_app_refuses_a_deny_list_of_names(tmp_path):
    result = run_preflight(tmp_path, "app", {**APP, "app_image_fetch_deny": ["db1.example.com"]})
    assert result.returncode != 0
    assert "app_image_fetch_deny" in result.stdout + result.stderr


def test_app_accepts_a_long_metrics_token(tmp_path):
    result = run_preflight(tmp_path, "app", {**APP, "app_metrics_token": TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_refuses_a_short_metrics_token_without_showing_it(tmp_path):
    short = "metrics-0123456789"  # 18 characters: strong enough as a password, not as a token
    result = run_preflight(tmp_path, "app", {**APP, "app_metrics_token": short})
    assert result.returncode != 0
    assert "app_metrics_token" in result.stdout + result.stderr
    assert short not in result.stdout + result.stderr
