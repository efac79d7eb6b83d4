"""What the monitoring role writes for an inventory, with the kit's wiring
(playbooks/group_vars): the Redis exporter speaks TLS exactly when Redis serves it, the
exporters' accounts are named once, and the blackbox probes and their modules agree on each web
host's server name.

The templates are rendered on the controller with the variables a play applying the role sees
(stackkit.inventory.PlayVars); no host is contacted."""

from __future__ import annotations

from pathlib import Path

import yaml

from stackkit.inventory import PlayVars

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles" / "monitoring" / "templates"
HOSTS = {
    "all": {
        "children": {
            "cache": {"hosts": {"cache1": {"ansible_host": "10.0.2.21"}}},
            "monitor": {"hosts": {"mon1": {"ansible_host": "10.0.9.1"}}},
        }
    }
}
SECRETS = {"vault_redis_exporter_password": "unit-test-only-exporter"}
CA = {"vault_pki_ca_certificate": "-----BEGIN CERTIFICATE-----\nunit test\n"}


def plays(tmp_path: Path, group_vars: dict, hosts: dict = HOSTS) -> PlayVars:
    # A directory of its own each time: Ansible caches what it has read by path.
    inventory = tmp_path / f"inventory{len(list(tmp_path.iterdir()))}"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    for group, values in group_vars.items():
        (inventory / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump(values))
    return PlayVars(str(inventory), vault=False)


def render(variables: PlayVars, hostname: str, template: str) -> str:
    path = TEMPLATES / template
    return variables.render(
        hostname, f"lookup('ansible.builtin.template', '{path}')", role="monitoring", facts=False
    )


def redis_settings(tmp_path, group_vars: dict) -> str:
    variables = plays(tmp_path, group_vars)
    return render(variables, "cache1", "etc/default/prometheus-redis-exporter.j2")


def test_the_redis_exporter_speaks_tls_where_the_internal_ca_turns_redis_tls_on(tmp_path):
    settings = redis_settings(tmp_path, {"all": {**SECRETS, **CA}})
    assert "REDIS_ADDR=rediss://127.0.0.1:6379" in settings
    assert "--tls-ca-cert-file=/etc/ssl/stackkit/ca.crt" in settings


def test_the_redis_exporter_follows_redis_tls_enabled_not_the_ca(tmp_path):
    """Redis without TLS on a site with the internal CA: the exporter speaks plain TCP."""
    settings = redis_settings(
        tmp_path, {"all": {**SECRETS, **CA}, "cache": {"redis_tls_enabled": False}}
    )
    assert "REDIS_ADDR=redis://127.0.0.1:6379" in settings
    assert "--tls-ca-cert-file" not in settings


def test_the_redis_exporter_speaks_tls_to_a_redis_with_tls_and_no_internal_ca(tmp_path):
    settings = redis_settings(
        tmp_path,
        {
            "all": SECRETS,
            "cache": {
                "redis_tls_enabled": True,
                "redis_tls_ca_certificate": "/etc/ssl/site-ca.pem",
            },
        },
    )
    assert "REDIS_ADDR=rediss://127.0.0.1:6379" in settings
    assert "--tls-ca-cert-file=/etc/ssl/site-ca.pem" in settings


def test_without_tls_the_redis_exporter_speaks_plain_tcp(tmp_path):
    settings = redis_settings(tmp_path, {"all": SECRETS})
    assert "REDIS_ADDR=redis://127.0.0.1:6379" in settings
    assert "--tls-ca-cert-file" not in settings


def test_the_services_create_the_accounts_the_exporters_log_in_as(tmp_path):
    """The wiring names each exporter's account once: a site that renames it renames the role
    PostgreSQL creates and the ACL user Redis creates with it."""
    hosts = {
        "all": {
            "children": {
                **HOSTS["all"]["children"],
                "db": {"hosts": {"db1": {"ansible_host": "10.0.2.11"}}},
            }
        }
    }
    renamed = {
        "all": SECRETS,
        "db": {"monitoring_postgres_exporter_role": "site_exporter"},
        "cache": {"monitoring_redis_exporter_user": "site-exporter"},
    }
    variables = plays(tmp_path, renamed, hosts)
    assert variables.value("db1", "postgresql_monitoring_role") == "site_exporter"
    assert variables.value("cache1", "redis_monitoring_user") == "site-exporter"
    assert variables.value("cache1", "redis_monitoring_password") == "unit-test-only-exporter"


def test_without_a_monitor_group_no_account_is_created(tmp_path):
    hosts = {"all": {"children": {"cache": HOSTS["all"]["children"]["cache"]}}}
    variables = plays(tmp_path, {}, hosts)
    assert variables.value("cache1", "redis_monitoring_user") == ""
    assert variables.value("cache1", "redis_monitoring_password") == ""


WEB_HOSTS = {
    "all": {
        "children": {
            "monitor": HOSTS["all"]["children"]["monitor"],
            "web": {
                "hosts": {
                    "web1": {
                        "ansible_host": "10.0.1.11",
                        "nginx_server_names": ["shop.example.com", "www.example.com"],
                    },
                    "web2": {"ansible_host": "10.0.1.12", "nginx_tls_port": 8443},
                    "web3": {
                        "ansible_host": "10.0.1.13",
                        "nginx_server_names": ["shop.example.com"],
                    },
                }
            },
        }
    }
}


def test_each_probe_uses_the_module_of_its_hosts_server_name(tmp_path):
    """One module per distinct server name (the host's first nginx_server_names entry, else its
    inventory name); each web host's probe names the module of its own server name."""
    variables = plays(tmp_path, {}, WEB_HOSTS)
    modules = yaml.safe_load(render(variables, "mon1", "etc/prometheus/blackbox.yml.j2"))
    names = {
        module: settings["http"]["tls_config"]["server_name"]
        for module, settings in modules["modules"].items()
        if module.startswith("https_")
    }
    assert names == {"https_1": "shop.example.com", "https_2": "web2"}
    for name, settings in modules["modules"].items():
        if name.startswith("https_"):
            assert settings["http"]["headers"]["Host"] == names[name]
    config = yaml.safe_load(render(variables, "mon1", "etc/prometheus/prometheus.yml.j2"))
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "blackbox")
    probes = {
        entry["labels"]["instance"]: (entry["targets"], entry["labels"]["__param_module"])
        for entry in job["static_configs"]
    }
    assert probes == {
        "web1": (["https://10.0.1.11:443/"], "https_1"),
        "web2": (["https://10.0.1.12:8443/"], "https_2"),
        "web3": (["https://10.0.1.13:443/"], "https_1"),
    }
    for entry in job["static_configs"]:
        assert names[entry["labels"]["__param_module"]] == entry["labels"]["server_name"]


def scraped(tmp_path, brokers: dict, group_vars: dict | None = None) -> dict[str, list[str]]:
    """The instances of each job of the monitor host's configuration."""
    hosts = {
        "all": {
            "children": {
                "monitor": HOSTS["all"]["children"]["monitor"],
                "broker": {"hosts": brokers},
            }
        }
    }
    variables = plays(tmp_path, group_vars or {}, hosts)
    config = yaml.safe_load(render(variables, "mon1", "etc/prometheus/prometheus.yml.j2"))
    return {
        job["job_name"]: [entry["labels"]["instance"] for entry in job["static_configs"]]
        for job in config["scrape_configs"]
    }


def test_the_brokers_are_scraped_where_the_wiring_turns_their_plugin_on(tmp_path):
    brokers = {"broker1": {"ansible_host": "10.0.5.11"}, "broker2": {"ansible_host": "10.0.5.12"}}
    assert scraped(tmp_path, brokers)["rabbitmq"] == ["broker1", "broker2"]


def test_a_broker_without_the_prometheus_plugin_is_not_scraped(tmp_path):
    """rabbitmq_prometheus_enabled false: nothing listens on the port, so no target (which
    would stay down and fire TargetDown) and, with no broker left, no job."""
    brokers = {
        "broker1": {"ansible_host": "10.0.5.11", "rabbitmq_prometheus_enabled": False},
        "broker2": {"ansible_host": "10.0.5.12"},
    }
    assert scraped(tmp_path, brokers)["rabbitmq"] == ["broker2"]
    jobs = scraped(tmp_path, brokers, {"broker": {"rabbitmq_prometheus_enabled": False}})
    assert "rabbitmq" not in jobs
    assert "node" in jobs


def catalogue_job(tmp_path, group_vars: dict | None = None, hosts=WEB_HOSTS) -> dict | None:
    variables = plays(tmp_path, group_vars or {}, hosts)
    config = yaml.safe_load(render(variables, "mon1", "etc/prometheus/prometheus.yml.j2"))
    return next((job for job in config["scrape_configs"] if job["job_name"] == "catalogue"), None)


def test_every_web_hosts_gunicorn_is_scraped_with_the_token_over_mutual_tls(tmp_path):
    """As nginx reaches gunicorn: HTTPS checked against the internal CA for the upstream's
    name, the monitor host's own certificate shown; and the token file."""
    job = catalogue_job(tmp_path)
    assert [entry["targets"] for entry in job["static_configs"]] == [
        ["10.0.1.11:8000"],
        ["10.0.1.12:8000"],
        ["10.0.1.13:8000"],
    ]
    assert [entry["labels"]["instance"] for entry in job["static_configs"]] == [
        "web1",
        "web2",
        "web3",
    ]
    assert job["metrics_path"] == "/metrics"
    assert job["scheme"] == "https"
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/catalogue-metrics.token",
    }
    assert job["tls_config"] == {
        "ca_file": "/etc/ssl/stackkit/ca.crt",
        "server_name": "catalogue-web.internal",
        "cert_file": "/etc/ssl/stackkit/host.crt",
        "key_file": "/etc/ssl/stackkit/host.key",
    }


def test_a_gunicorn_moved_or_without_tls_is_scraped_where_and_as_it_serves(tmp_path):
    job = catalogue_job(tmp_path, {"web": {"gunicorn_port": 8100, "gunicorn_tls_enabled": False}})
    assert job["static_configs"][0]["targets"] == ["10.0.1.11:8100"]
    assert job["scheme"] == "http"
    assert "tls_config" not in job


MONITOR_ONLY = {"all": {"children": {"monitor": HOSTS["all"]["children"]["monitor"]}}}


def test_without_a_web_host_there_is_no_catalogue_job(tmp_path):
    assert catalogue_job(tmp_path, hosts=MONITOR_ONLY) is None


def test_the_web_hosts_get_the_metrics_token_only_with_a_monitor_group(tmp_path):
    token = {"vault_app_metrics_token": "unit-test-only-metrics-token-0123456789"}
    variables = plays(tmp_path, {"all": token}, WEB_HOSTS)
    assert variables.value("web1", "app_metrics_token") == token["vault_app_metrics_token"]
    assert variables.value("mon1", "monitoring_catalogue_token") == token["vault_app_metrics_token"]
    alone = {"all": {"children": {"web": WEB_HOSTS["all"]["children"]["web"]}}}
    assert plays(tmp_path, {"all": token}, alone).value("web1", "app_metrics_token") == ""


def test_the_catalogue_rules_name_the_thresholds(tmp_path):
    variables = plays(
        tmp_path,
        {
            "monitor": {
                "monitoring_catalogue_outbox_overdue_seconds": 90,
                "monitoring_catalogue_5xx_percent": 2.5,
                "monitoring_catalogue_latency_p99_seconds": 0.75,
                "monitoring_catalogue_window": "10m",
            }
        },
        WEB_HOSTS,
    )
    rules = yaml.safe_load(render(variables, "mon1", "etc/prometheus/rules/catalogue.yml.j2"))
    by_name = {rule["alert"]: rule for rule in rules["groups"][0]["rules"]}
    assert set(by_name) == {"CatalogueOutboxOverdue", "Catalogue5xxRatio", "CatalogueLatencyP99"}
    assert by_name["CatalogueOutboxOverdue"]["expr"].endswith("> 90")
    assert "for" not in by_name["CatalogueOutboxOverdue"]
    assert "> 2.5" in by_name["Catalogue5xxRatio"]["expr"]
    assert 'status=~"5.."' in by_name["Catalogue5xxRatio"]["expr"]
    assert "[10m]" in by_name["Catalogue5xxRatio"]["expr"]
    assert by_name["Catalogue5xxRatio"]["for"] == "10m"
    assert "histogram_quantile(0.99, sum by (view, le)" in by_name["CatalogueLatencyP99"]["expr"]
    assert "> 0.75" in by_name["CatalogueLatencyP99"]["expr"]
    empty = plays(tmp_path, {}, MONITOR_ONLY)
    assert (
        yaml.safe_load(render(empty, "mon1", "etc/prometheus/rules/catalogue.yml.j2"))["groups"][0][
            "rules"
        ]
        == []
    )


def test_the_workers_figures_go_to_their_hosts_node_exporter_where_there_is_a_monitor(tmp_path):
    """With a monitor group, each worker host's Celery workers write their figures to
    celery_metrics_dir, the directory that host's node exporter serves (textfile collector);
    a host without workers keeps the package's directory; without a monitor group the workers
    record nothing."""
    hosts = {"all": {"children": {**HOSTS["all"]["children"]}}}
    hosts["all"]["children"]["worker"] = {"hosts": {"worker1": {"ansible_host": "10.0.3.1"}}}
    variables = plays(tmp_path, {"all": {**SECRETS}}, hosts)
    directory = variables.value("worker1", "celery_metrics_dir", "celery")
    assert directory == "/var/lib/catalogue-worker-metrics"
    node = "etc/default/prometheus-node-exporter.j2"
    assert f"--collector.textfile.directory={directory}" in render(variables, "worker1", node)
    assert "--collector.textfile.directory" not in render(variables, "cache1", node)
    unmonitored = {"all": {"children": {"worker": hosts["all"]["children"]["worker"]}}}
    variables = plays(tmp_path, {"all": {**SECRETS}}, unmonitored)
    assert variables.value("worker1", "celery_metrics_dir", "celery") == ""
