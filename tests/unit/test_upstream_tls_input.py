"""The preflights of TLS from nginx to gunicorn: gunicorn's certificate must carry the one name
nginx checks every server of its upstream against, and nginx must be given that name; bad input
stops either role before it changes anything, naming the variable.

The preflight runs on the controller (tests/unit/preflight.py), the certificate a file written
here.
"""

from __future__ import annotations

import sys

import pytest
from preflight import output, run_preflight
from test_rabbitmq_dist_input import certificate

NAME = "catalogue-web.internal"
GUNICORN = {
    "gunicorn_tls_enabled": True,
    "gunicorn_tls_server_name": NAME,
    "ansible_python_interpreter": sys.executable,
}
NGINX = {"nginx_upstream_tls_enabled": True, "nginx_upstream_tls_name": NAME}


def refused(tmp_path, role: str, variables: dict, *expected: str) -> None:
    result = run_preflight(tmp_path, role, variables)
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text, text
    for part in expected:
        assert part in text, (part, text)


def test_a_gunicorn_certificate_without_the_name_nginx_checks_is_refused(tmp_path):
    path = certificate(tmp_path, ["web1.example.org"])
    variables = {**GUNICORN, "gunicorn_tls_certificate": str(path)}
    refused(tmp_path, "gunicorn", variables, "gunicorn_tls_server_name", f"DNS:{NAME}", "web1")


def test_a_gunicorn_certificate_with_the_name_nginx_checks_passes(tmp_path):
    path = certificate(tmp_path, ["web1.example.org", NAME])
    result = run_preflight(
        tmp_path, "gunicorn", {**GUNICORN, "gunicorn_tls_certificate": str(path)}
    )
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "variable",
    ["gunicorn_tls_certificate", "gunicorn_tls_private_key", "gunicorn_tls_ca_certificate"],
)
def test_a_gunicorn_tls_file_that_is_not_an_absolute_path_is_refused(tmp_path, variable):
    refused(tmp_path, "gunicorn", {**GUNICORN, variable: "host.crt"}, variable)


def test_in_check_mode_a_new_host_without_a_certificate_yet_passes(tmp_path):
    """--check on a new host: the pki role has not issued the certificate yet."""
    missing = str(tmp_path / "not-issued-yet.crt")
    result = run_preflight(tmp_path, "gunicorn", {**GUNICORN, "gunicorn_tls_certificate": missing})
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"nginx_upstream_tls_name": ""}, "nginx_upstream_tls_name"),
        ({"nginx_upstream_tls_name": "two names"}, "nginx_upstream_tls_name"),
        ({"nginx_upstream_tls_verify_depth": 0}, "nginx_upstream_tls_verify_depth"),
        ({"nginx_upstream_tls_ca_certificate": "ca.crt"}, "nginx_upstream_tls_ca_certificate"),
        ({"nginx_upstream_tls_certificate_key": ""}, "nginx_upstream_tls_certificate_key"),
    ],
)
def test_nginx_refuses_upstream_tls_it_could_not_verify(tmp_path, overrides, variable):
    refused(tmp_path, "nginx", {**NGINX, **overrides}, variable)


def test_nginx_with_the_name_and_the_pki_roles_files_passes(tmp_path):
    result = run_preflight(tmp_path, "nginx", NGINX)
    assert result.returncode == 0, output(result)
