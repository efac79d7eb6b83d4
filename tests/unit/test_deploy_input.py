"""The deploy roles (app, gunicorn, celery, nginx) refuse bad input before they change
anything, with a message naming the variable."""

from __future__ import annotations

import pytest
from preflight import output, run_preflight

APP = {
    "app_secret_key": "unit-test-only-" + "k" * 40,
    "app_postgres_password": "unit-test-only-postgres",
    "app_redis_password": "unit-test-only-redis",
    "app_rabbitmq_password": "unit-test-only-rabbitmq",
    "app_mongodb_password": "unit-test-only-mongodb",
}
GOOD = {"app": APP, "gunicorn": {}, "celery": {}, "nginx": {}}


@pytest.mark.parametrize("role", sorted(GOOD))
def test_the_defaults_and_inventory_values_pass(tmp_path, role):
    result = run_preflight(tmp_path, role, GOOD[role])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("role", "bad", "variable", "expected"),
    [
        ("app", {"app_secret_key": "short"}, "app_secret_key", "at least 32 characters"),
        ("app", {"app_mongodb_password": ""}, "app_mongodb_password", "must be set"),
        ("app", {"app_redis_password": "long-enough-it's"}, "app_redis_password", "single quote"),
        ("app", {"app_extra_environment": {"X": "a\nb"}}, "X", "newline"),
        ("app", {"app_user": "root"}, "app_user", "unprivileged"),
        ("app", {"app_keep_releases": 1}, "app_keep_releases", "at least 2"),
        ("app", {"app_elasticsearch_url": "es:9200"}, "app_elasticsearch_url", "http://"),
        ("app", {"app_source_dir": "/nonexistent"}, "app_source_dir", "manage.py"),
        ("app", {"app_log_level": "LOUD"}, "app_log_level", "LOUD"),
        (
            "app",
            {"app_submission_redrive_after": 0},
            "app_submission_redrive_after",
            "at least 1",
        ),
        ("gunicorn", {"gunicorn_port": 70000}, "gunicorn_port", "between 1 and 65535"),
        ("gunicorn", {"gunicorn_bind_address": "0.0.0.0"}, "gunicorn_bind_address", "wildcard"),
        ("gunicorn", {"gunicorn_workers": 0}, "gunicorn_workers", "at least 1"),
        ("gunicorn", {"gunicorn_user": "root"}, "gunicorn_user", "unprivileged"),
        ("gunicorn", {"gunicorn_worker_class": "eventlet"}, "gunicorn_worker_class", "eventlet"),
        (
            "celery",
            {"celery_workers": [{"name": "Slow!", "queues": ["slow"], "concurrency": 1}]},
            "celery_workers",
            "lower-case",
        ),
        (
            "celery",
            {"celery_workers": [{"name": "a", "queues": [], "concurrency": 1}] * 2},
            "celery_workers",
            "queues must not be empty",
        ),
        ("celery", {"celery_workers": [{"name": "a"}]}, "celery_workers", "queues"),
        ("celery", {"celery_beat_state_dir": "/srv/beat"}, "celery_beat_state_dir", "/var/lib"),
        ("celery", {"celery_metrics_dir": "/srv/metrics"}, "celery_metrics_dir", "/var/lib"),
        ("celery", {"celery_metrics_dir": "/var/lib/a/b"}, "celery_metrics_dir", "directly"),
        ("celery", {"celery_metrics_interval": 0}, "celery_metrics_interval", "at least 1"),
        ("nginx", {"nginx_upstream_servers": []}, "nginx_upstream_servers", "at least one"),
        (
            "nginx",
            {"nginx_upstream_servers": ["10.0.0.5"]},
            "nginx_upstream_servers",
            "host:port",
        ),
        ("nginx", {"nginx_static_root": "staticfiles"}, "nginx_static_root", "ending in /"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_input_fails_naming_the_variable(tmp_path, role, bad, variable, expected):
    result = run_preflight(tmp_path, role, {**GOOD[role], **bad})
    assert result.returncode != 0
    assert variable in output(result)
    assert expected in output(result)
