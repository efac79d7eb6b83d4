"""The web hosts: nginx in front, gunicorn serving the live release of the app role as its own
account on the private address, static files from the release, secrets kept from others."""

from __future__ import annotations

import re
import urllib.request

import pytest
from conftest import (
    address_of,
    assert_sandboxed,
    main_pid,
    process_limits,
    render,
    tcp_reachable_from_controller,
    wait_for,
)

testinfra_hosts = ["ansible://web"]
ROLE = "gunicorn"


@pytest.fixture
def app_var(var):
    return lambda name: var(name, "app")


@pytest.fixture
def nginx_var(var):
    return lambda name: var(name, "nginx")


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_gunicorn_runs_the_live_release_as_the_app_account(host, v):
    service = host.service(v("gunicorn_service_name"))
    assert service.is_running
    assert service.is_enabled
    pid = main_pid(host, v("gunicorn_service_name"))
    assert host.process.get(pid=pid).user == v("gunicorn_user")
    assert v("gunicorn_user") != "root"
    cwd = host.check_output(f"readlink /proc/{pid}/cwd")
    live = host.check_output(f"readlink -f {v('gunicorn_app_dir')}")
    assert cwd == live


def test_gunicorn_is_sandboxed(host, v):
    assert_sandboxed(host, v("gunicorn_service_name"), "app")


def test_gunicorn_runs_the_configured_number_of_workers(host, v):
    config = host.file(f"{v('gunicorn_config_dir')}/gunicorn.conf.py").content_string
    configured = int(re.search(r"^workers = (\d+)$", config, re.MULTILINE).group(1))
    assert configured >= 1
    pid = main_pid(host, v("gunicorn_service_name"))
    assert wait_for(lambda: int(host.check_output(f"pgrep -c -P {pid}")) == configured)


def test_gunicorn_listens_on_the_private_address_only(host, v):
    port = v("gunicorn_port")
    assert wait_for(lambda: host.socket(f"tcp://{address_of(host)}:{port}").is_listening)
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening


def test_gunicorn_is_not_reachable_from_outside_the_web_tier(host, v):
    assert not tcp_reachable_from_controller(address_of(host), v("gunicorn_port"))


def test_open_files_limit_reaches_gunicorn(host, v):
    limits = process_limits(host, main_pid(host, v("gunicorn_service_name")))
    assert limits["Max open files"] == (str(v("gunicorn_limit_nofile")),) * 2


def test_release_code_cannot_be_changed_by_the_app_account(host, app_var):
    live = host.file(f"{app_var('app_root')}/current")
    assert live.is_symlink
    release = host.file(live.linked_to)
    assert release.user == "root"
    assert release.mode == 0o755
    probe = host.run(f"sudo -u {app_var('app_user')} touch {live.linked_to}/probe")
    assert probe.rc != 0


def test_environment_file_is_readable_by_the_app_group_only(host, app_var):
    env = host.file(f"{app_var('app_config_dir')}/catalogue.env")
    assert env.user == "root"
    assert env.group == app_var("app_group")
    assert env.mode == 0o640
    assert "DJANGO_SETTINGS_MODULE='catalogue_site.settings.production'" in env.content_string


def test_nginx_is_running_with_a_valid_configuration(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.run("nginx -t -q").rc == 0
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_nginx_proxies_to_the_app(host, nginx_var):
    url = f"http://{address_of(host)}:{nginx_var('nginx_listen_port')}/healthz"
    status, headers, body = fetch(url)
    assert status == 200
    assert b'"ok"' in body
    assert headers.get("Server") == "nginx"  # no version


def test_nginx_serves_static_files_from_the_release(host, nginx_var):
    base = f"http://{address_of(host)}:{nginx_var('nginx_listen_port')}"
    status, headers, body = fetch(f"{base}{nginx_var('nginx_static_url')}catalogue/autocomplete.js")
    assert status == 200
    assert "max-age" in headers.get("Cache-Control", "")
    served = host.file(f"{nginx_var('nginx_static_root')}catalogue/autocomplete.js").content
    assert body == served


def test_every_web_host_is_an_upstream(host, nginx_var):
    site = host.file(f"/etc/nginx/sites-available/{nginx_var('nginx_site_name')}.conf")
    for server in render(host, "nginx_upstream_servers"):
        assert f"server {server} " in site.content_string
