"""The app hosts' links to PostgreSQL, Redis, RabbitMQ, MongoDB and Elasticsearch: encrypted,
checked against the internal CA, and a client that tries plaintext (or trusts another CA, or
brings no certificate to the search proxy) gets nowhere.

Read-only: each check opens a connection from an app host, with the app's own libraries and
settings (catalogue-manage shell), and writes nothing."""

from __future__ import annotations

import json
import shlex

import pytest

testinfra_hosts = ["ansible://app"]
ROLE = "app"

# Each probe prints one JSON object; "error" holds the exception's class and text.
PROBE = """
import json
from django.conf import settings
def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
"""


@pytest.fixture(scope="module")
def probe(host):
    def run(body: str) -> dict:
        code = PROBE + body
        out = host.check_output(f"catalogue-manage shell --verbosity 0 -c {shlex.quote(code)}")
        return json.loads(out.strip().splitlines()[-1])

    return run


def needs(v, name: str) -> None:
    if not v(name):
        pytest.skip(f"{name} is false in this inventory")


def test_the_app_reaches_postgresql_over_verified_tls_only(v, probe):
    needs(v, "app_postgres_tls")
    result = probe("""
import psycopg
from django.db import connection
db = settings.DATABASES["default"]
def live():
    with connection.cursor() as cursor:
        cursor.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return list(cursor.fetchone())
def plain():
    psycopg.connect(host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"],
                    password=db["PASSWORD"], sslmode="disable", connect_timeout=5).close()
    return "connected"
print(json.dumps({"options": db["OPTIONS"], "live": attempt(live), "plain": attempt(plain)}))
""")
    assert result["options"]["sslmode"] == "verify-full"
    assert result["options"]["sslrootcert"] == v("app_tls_ca_certificate")
    assert "ok" in result["live"], result
    assert result["live"]["ok"][0] is True, result
    assert result["live"]["ok"][1] in ("TLSv1.2", "TLSv1.3"), result
    # pg_hba.conf turns a plaintext login away before the password is even asked for.
    assert "no encryption" in result["plain"].get("error", ""), result


def test_the_app_reaches_redis_over_verified_tls_only(v, probe):
    needs(v, "app_redis_tls")
    result = probe("""
import redis
from django_redis import get_redis_connection
def live():
    client = get_redis_connection("default")
    kwargs = client.connection_pool.connection_kwargs
    return [client.ping(), client.connection_pool.connection_class.__name__,
            kwargs.get("ssl_check_hostname"), kwargs.get("ssl_ca_certs")]
common = dict(host=settings.REDIS_HOST, port=settings.REDIS_PORT, username=settings.REDIS_USER,
              password=settings.REDIS_PASSWORD, socket_timeout=5, socket_connect_timeout=5)
def plain():
    return redis.Redis(**common).ping()
def other_ca():
    return redis.Redis(**common, ssl=True, ssl_cert_reqs="required",
                       ssl_ca_certs="/etc/ssl/certs/ca-certificates.crt").ping()
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    expected = [True, "SSLConnection", True, v("app_tls_ca_certificate")]
    assert "ok" in result["live"], result
    assert result["live"]["ok"] == expected, result
    assert "error" in result["plain"], result
    # Only the internal CA vouches for the server: a client trusting the public CAs refuses it.
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result


def test_the_app_reaches_rabbitmq_over_verified_tls_only(v, probe):
    needs(v, "app_rabbitmq_tls")
    result = probe("""
import ssl
from kombu import Connection
def connect(url, use_ssl):
    with Connection(url, connect_timeout=5, ssl=use_ssl) as conn:
        conn.connect()
        return conn.transport_cls
url = settings.CELERY_BROKER_URL
def live():
    return [url.split(":", 1)[0], connect(url, settings.CELERY_BROKER_USE_SSL)]
def plain():
    return connect("amqp" + url[len("amqps"):], False)
def other_ca():
    options = dict(settings.CELERY_BROKER_USE_SSL, ca_certs="/etc/ssl/certs/ca-certificates.crt")
    return connect(url, options)
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"][0] == "amqps", result
    assert "error" in result["plain"], result
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result


def test_the_app_reaches_elasticsearch_only_through_its_tls_proxy_with_a_certificate(v, probe):
    if not str(v("app_elasticsearch_url")).startswith("https://"):
        pytest.skip("app_elasticsearch_url is not https in this inventory")
    result = probe("""
import requests
from catalogue.search.client import get_client
url = settings.ELASTICSEARCH_URL
def live():
    return get_client().request("GET", "/")["version"]["number"]
def no_certificate():
    return requests.get(url, verify=settings.TLS_CA_FILE, timeout=5).status_code
def plain():
    return requests.get("http" + url[len("https"):], timeout=5).status_code
print(json.dumps({"live": attempt(live), "no_certificate": attempt(no_certificate),
                  "plain": attempt(plain)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"].startswith("5."), result
    # The proxy ends the handshake of a client without a certificate of the internal CA.
    # (TLS 1.3 may report it on the first read, as a reset rather than an SSL error.)
    assert "Error" in result["no_certificate"].get("error", ""), result
    assert "error" in result["plain"], result


def test_the_app_reaches_mongodb_over_verified_tls_only(v, probe):
    needs(v, "app_mongodb_tls")
    result = probe("""
import pymongo
from catalogue.documents import MongoStore
common = dict(host=settings.MONGODB_HOST, port=settings.MONGODB_PORT,
              username=settings.MONGODB_USER, password=settings.MONGODB_PASSWORD,
              authSource=settings.MONGODB_AUTH_SOURCE, serverSelectionTimeoutMS=5000,
              directConnection=True)
def live():
    return MongoStore().client.admin.command("ping")["ok"]
def plain():
    return pymongo.MongoClient(**common).admin.command("ping")["ok"]
def other_ca():
    return pymongo.MongoClient(**common, tls=True,
                               tlsCAFile="/etc/ssl/certs/ca-certificates.crt").admin.command("ping")
print(json.dumps({"live": attempt(live), "plain": attempt(plain), "other_ca": attempt(other_ca)}))
""")
    assert "ok" in result["live"], result
    assert result["live"]["ok"] == 1.0, result
    assert "error" in result["plain"], result
    assert "CERTIFICATE_VERIFY_FAILED" in result["other_ca"].get("error", ""), result
