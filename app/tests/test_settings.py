import importlib
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

ENV = {
    "DJANGO_SECRET_KEY": "s3cret",
    "POSTGRES_HOST": "db1",
    "POSTGRES_PASSWORD": "pg pass/with:odd@chars",
    "REDIS_HOST": "cache1",
    "REDIS_PASSWORD": "redis:pw",
    "RABBITMQ_HOST": "broker1",
    "RABBITMQ_PASSWORD": "mq@pw",
    "ELASTICSEARCH_URL": "http://search1:9200",
}


def load_production(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("catalogue_site.settings.production", "catalogue_site.settings.base"):
        sys.modules.pop(name, None)
    return importlib.import_module("catalogue_site.settings.production")


def test_production_reads_addresses_and_secrets_from_the_environment(monkeypatch):
    prod = load_production(monkeypatch, ENV)
    assert prod.SECRET_KEY == "s3cret"
    assert prod.DATABASES["default"]["HOST"] == "db1"
    assert prod.DATABASES["default"]["PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    assert prod.CELERY_BROKER_URL == "amqp://catalogue:mq%40pw@broker1:5672/catalogue"
    assert prod.CELERY_RESULT_BACKEND == "redis://:redis%3Apw@cache1:6379/2"
    assert prod.ELASTICSEARCH_URL == "http://search1:9200"
    assert prod.DEBUG is False


def test_production_refuses_to_start_without_a_secret(monkeypatch):
    env = {k: v for k, v in ENV.items() if k != "DJANGO_SECRET_KEY"}
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY"):
        load_production(monkeypatch, env)


def test_cache_uses_msgpack_and_zlib_and_broker_loses_nothing(monkeypatch):
    prod = load_production(monkeypatch, ENV)
    options = prod.CACHES["default"]["OPTIONS"]
    assert options["SERIALIZER"] == "django_redis.serializers.msgpack.MSGPackSerializer"
    assert options["COMPRESSOR"] == "django_redis.compressors.zlib.ZlibCompressor"
    assert prod.CELERY_BROKER_TRANSPORT_OPTIONS == {"confirm_publish": True}
    assert prod.CELERY_TASK_ACKS_LATE and prod.CELERY_TASK_REJECT_ON_WORKER_LOST
    assert prod.CELERY_TASK_DEFAULT_DELIVERY_MODE == "persistent"
    assert prod.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert all(queue.durable for queue in prod.CELERY_TASK_QUEUES)
    assert {q.name for q in prod.CELERY_TASK_QUEUES} == {"default", "indexing", "slow"}
    assert prod.CELERY_TASK_SOFT_TIME_LIMIT < prod.CELERY_TASK_TIME_LIMIT


def test_celery_reads_the_celery_namespace_from_django_settings():
    from catalogue_site.celery import app  # noqa: PLC0415

    assert app.conf.task_acks_late is True
    assert app.conf.task_default_queue == "default"
    assert app.conf.task_routes["catalogue.tasks.fetch_image_metadata"]["queue"] == "slow"
    assert "catalogue.tasks.insert_product" in app.tasks
    assert hasattr(app.tasks["catalogue.tasks.index_product"], "delay_on_commit")


def test_the_outbox_reads_its_deadlines_from_the_environment(monkeypatch):
    env = ENV | {
        "CATALOGUE_REDRIVE_AFTER": "45",
        "CATALOGUE_REDRIVE_INTERVAL": "10",
        "CATALOGUE_REDRIVE_BACKOFF_CAP": "600",
        "CATALOGUE_SUBMISSION_RETENTION_DAYS": "3",
        "CATALOGUE_RETRY_AFTER": "9",
    }
    prod = load_production(monkeypatch, env)
    assert prod.CATALOGUE_REDRIVE_AFTER == 45
    assert prod.CATALOGUE_REDRIVE_BACKOFF_CAP == 600
    assert prod.CATALOGUE_SUBMISSION_RETENTION_DAYS == 3
    assert prod.CATALOGUE_RETRY_AFTER == 9
    redrive = prod.CELERY_BEAT_SCHEDULE["redrive-submissions"]
    assert (redrive["task"], redrive["schedule"]) == ("catalogue.tasks.redrive_submissions", 10)
    assert prod.CELERY_BEAT_SCHEDULE["prune-submissions"]["task"] == (
        "catalogue.tasks.prune_submissions"
    )


def test_a_task_held_longer_than_the_broker_consumer_timeout_is_refused(monkeypatch):
    """acks_late holds a message until its task ends, and a retry's message through its
    countdown: RabbitMQ would take it back from a worker holding it past consumer_timeout."""
    prod = load_production(monkeypatch, ENV)
    assert prod.CELERY_TASK_ACKS_LATE
    assert prod.CELERY_TASK_TIME_LIMIT + prod.INDEXING_BACKOFF_CAP < prod.RABBITMQ_CONSUMER_TIMEOUT
    with pytest.raises(ImproperlyConfigured, match="RABBITMQ_CONSUMER_TIMEOUT"):
        load_production(monkeypatch, ENV | {"INDEXING_BACKOFF_CAP": "1800"})
    with pytest.raises(ImproperlyConfigured, match="RABBITMQ_CONSUMER_TIMEOUT"):
        load_production(monkeypatch, ENV | {"RABBITMQ_CONSUMER_TIMEOUT": "300"})
