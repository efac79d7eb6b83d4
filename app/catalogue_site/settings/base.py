"""Settings shared by every environment. Addresses and secrets come from the environment only.

The variables are listed in app/README.md. Base gives loopback defaults for addresses so that a
developer can run the app against local services; production.py requires the secrets.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from .env import env, env_bool, env_float, env_int, env_list, url_with_credentials

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env("DJANGO_SECRET_KEY", "")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "django_prometheus",
    "catalogue",
]

MIDDLEWARE = [
    # Outermost, so the request metrics time everything below (catalogue/metrics.py).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # First, so it strips the body of every HEAD answer, error pages included (see its docstring).
    "catalogue.middleware.head_without_body",
    # /metrics, for the monitor hosts, before the Host header is checked (catalogue/metrics.py).
    "catalogue.metrics.endpoint",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Innermost: counts each response by status and view and times the view.
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# --- Who may add products through the page -----------------------------------------------------
# Django's accounts, made by the operator (`manage.py catalogue_user NAME`, password on standard
# input); nobody signs up. Sessions live in PostgreSQL (the beat task clear_sessions deletes the
# expired ones); a sign-in lasts DJANGO_SESSION_AGE seconds and ends with the browser.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "index"
SESSION_COOKIE_AGE = env_int("DJANGO_SESSION_AGE", 8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 16},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

ROOT_URLCONF = "catalogue_site.urls"
WSGI_APPLICATION = "catalogue_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

# --- TLS to the data services ------------------------------------------------------------------
# The internal CA every data service's certificate is checked against; each link below turns
# TLS on with its own switch and then verifies the server's name as well as its chain.
TLS_CA_FILE = env("TLS_CA_FILE", "")

# --- PostgreSQL -------------------------------------------------------------------------------
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": env("POSTGRES_HOST", "127.0.0.1"),
        "PORT": env_int("POSTGRES_PORT", 5432),
        "NAME": env("POSTGRES_DB", "catalogue"),
        "USER": env("POSTGRES_USER", "catalogue"),
        "PASSWORD": env("POSTGRES_PASSWORD", ""),
        "CONN_MAX_AGE": env_int("POSTGRES_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            "connect_timeout": env_int("POSTGRES_CONNECT_TIMEOUT", 3),
            # verify-full in production: TLS, the internal CA, and the server's own name.
            "sslmode": env("POSTGRES_SSLMODE", "prefer"),
            **({"sslrootcert": TLS_CA_FILE} if TLS_CA_FILE else {}),
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Django cache (msgpack + zlib) and Celery results -----------------------------------
REDIS_HOST = env("REDIS_HOST", "127.0.0.1")
REDIS_PORT = env_int("REDIS_PORT", 6379)
REDIS_USER = env("REDIS_USER", "")
REDIS_PASSWORD = env("REDIS_PASSWORD", "")
REDIS_CACHE_DB = env_int("REDIS_CACHE_DB", 1)
REDIS_RESULT_DB = env_int("REDIS_RESULT_DB", 2)
REDIS_TIMEOUT = env_float("REDIS_TIMEOUT", 1.0)
REDIS_TLS = env_bool("REDIS_TLS", False)
_REDIS_SCHEME = "rediss" if REDIS_TLS else "redis"
# redis-py's names for a verified TLS link; the same for the cache and Celery's results.
_REDIS_TLS_OPTIONS = (
    {"ssl_cert_reqs": "required", "ssl_ca_certs": TLS_CA_FILE or None, "ssl_check_hostname": True}
    if REDIS_TLS
    else {}
)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url_with_credentials(
            _REDIS_SCHEME, REDIS_HOST, REDIS_PORT, REDIS_USER, REDIS_PASSWORD, str(REDIS_CACHE_DB)
        ),
        "KEY_PREFIX": "catalogue",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SERIALIZER": "django_redis.serializers.msgpack.MSGPackSerializer",
            "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
            "SOCKET_CONNECT_TIMEOUT": REDIS_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_TIMEOUT,
            "CONNECTION_POOL_KWARGS": _REDIS_TLS_OPTIONS,
        },
    }
}
# The cache is an optimisation: a Redis outage degrades autocomplete to uncached, not to errors.
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- RabbitMQ broker and Celery ------------------------------------------------------------------
RABBITMQ_HOST = env("RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = env_int("RABBITMQ_PORT", 5672)
RABBITMQ_USER = env("RABBITMQ_USER", "catalogue")
RABBITMQ_PASSWORD = env("RABBITMQ_PASSWORD", "")
RABBITMQ_VHOST = env("RABBITMQ_VHOST", "catalogue")
RABBITMQ_TLS = env_bool("RABBITMQ_TLS", False)

CELERY_BROKER_URL = url_with_credentials(
    "amqps" if RABBITMQ_TLS else "amqp",
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_USER,
    RABBITMQ_PASSWORD,
    RABBITMQ_VHOST,
)
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("RABBITMQ_CONNECT_TIMEOUT", 3.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publisher confirms: a publish returns only once RabbitMQ has taken the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
# py-amqp checks the broker's name against its certificate when server_hostname is given.
CELERY_BROKER_USE_SSL = (
    {
        "ca_certs": TLS_CA_FILE or None,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": RABBITMQ_HOST,
    }
    if RABBITMQ_TLS
    else False
)
CELERY_RESULT_BACKEND = url_with_credentials(
    _REDIS_SCHEME, REDIS_HOST, REDIS_PORT, REDIS_USER, REDIS_PASSWORD, str(REDIS_RESULT_DB)
)
CELERY_REDIS_BACKEND_USE_SSL = (
    {**_REDIS_TLS_OPTIONS, "ssl_cert_reqs": ssl.CERT_REQUIRED} if REDIS_TLS else None
)
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 86400)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"

# Durable queues on one durable direct exchange, persistent messages.
_TASKS_EXCHANGE = Exchange("catalogue", type="direct", durable=True)
CELERY_TASK_QUEUES = (
    Queue("default", _TASKS_EXCHANGE, routing_key="default", durable=True),
    Queue("indexing", _TASKS_EXCHANGE, routing_key="indexing", durable=True),
    Queue("slow", _TASKS_EXCHANGE, routing_key="slow", durable=True),
)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_DEFAULT_EXCHANGE = "catalogue"
CELERY_TASK_DEFAULT_ROUTING_KEY = "default"
CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"
CELERY_TASK_ROUTES = {
    "catalogue.tasks.insert_product": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.insert_batch": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.summarise_batch": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.index_product": {"queue": "indexing", "routing_key": "indexing"},
    "catalogue.tasks.index_products": {"queue": "indexing", "routing_key": "indexing"},
    "catalogue.tasks.reconcile_index": {"queue": "indexing", "routing_key": "indexing"},
    "catalogue.tasks.redrive_submissions": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.prune_submissions": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.fetch_image_metadata": {"queue": "slow", "routing_key": "slow"},
    "catalogue.tasks.fetch_images": {"queue": "slow", "routing_key": "slow"},
    "catalogue.tasks.record_image_attempt": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.record_image_attempts": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.count_view": {"queue": "default", "routing_key": "default"},
    "catalogue.tasks.clear_sessions": {"queue": "default", "routing_key": "default"},
}
CELERY_TASK_PUBLISH_RETRY = True
# One quick retry, not Celery's default of three: a request publishes after its submission has
# committed (the outbox), so a broker that is down costs a re-drive later, not a long wait now.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
# Acknowledge after the work is done; a worker killed mid-task gives the message back. RabbitMQ
# gives a message back too when its consumer holds it unacknowledged longer than the broker's
# consumer_timeout (checked against the slowest task at the end of this file).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process (the slow worker relies on it; see README).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90)
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BEAT_SCHEDULE = {
    "reconcile-search-index": {
        "task": "catalogue.tasks.reconcile_index",
        "schedule": env_float("CATALOGUE_RECONCILE_INTERVAL", 300.0),
        "options": {"queue": "indexing"},
    },
    "redrive-submissions": {
        "task": "catalogue.tasks.redrive_submissions",
        "schedule": env_float("CATALOGUE_REDRIVE_INTERVAL", 30.0),
        "options": {"queue": "default"},
    },
    "prune-submissions": {
        "task": "catalogue.tasks.prune_submissions",
        "schedule": 3600.0,
        "options": {"queue": "default"},
    },
    "clear-sessions": {
        "task": "catalogue.tasks.clear_sessions",
        "schedule": 3600.0,
        "options": {"queue": "default"},
    },
}

# --- Elasticsearch 5.6 ------------------------------------------------------------------------
ELASTICSEARCH_URL = env("ELASTICSEARCH_URL", "http://127.0.0.1:9200")
ELASTICSEARCH_ALIAS = env("ELASTICSEARCH_ALIAS", "products")
ELASTICSEARCH_TIMEOUT = env_float("ELASTICSEARCH_TIMEOUT", 3.0)
# The certificate and key this host presents to the search hosts' TLS proxy (https URLs).
ELASTICSEARCH_CLIENT_CERT = env("ELASTICSEARCH_CLIENT_CERT", "")
ELASTICSEARCH_CLIENT_KEY = env("ELASTICSEARCH_CLIENT_KEY", "")

# --- MongoDB ------------------------------------------------------------------------------------
MONGODB_HOST = env("MONGODB_HOST", "127.0.0.1")
MONGODB_PORT = env_int("MONGODB_PORT", 27017)
MONGODB_USER = env("MONGODB_USER", "")
MONGODB_PASSWORD = env("MONGODB_PASSWORD", "")
MONGODB_DB = env("MONGODB_DB", "catalogue")
MONGODB_AUTH_SOURCE = env("MONGODB_AUTH_SOURCE", MONGODB_DB)
MONGODB_TIMEOUT_MS = env_int("MONGODB_TIMEOUT_MS", 2000)
MONGODB_TLS = env_bool("MONGODB_TLS", False)

# --- Catalogue behaviour ------------------------------------------------------------------------
CATALOGUE_DOCUMENT_STORE = "catalogue.documents.MongoStore"
CATALOGUE_AUTOCOMPLETE_TTL = env_int("CATALOGUE_AUTOCOMPLETE_TTL", 30)
# Seconds a process answers autocomplete uncached after the index changed: at least the index's
# refresh interval (1 s), so that nothing looked up before the refresh is cached (see
# catalogue/autocomplete_cache.py).
CATALOGUE_AUTOCOMPLETE_SETTLE = env_float("CATALOGUE_AUTOCOMPLETE_SETTLE", 2.0)
# Products per batch request: each costs an insert, an indexing and an image fetch.
CATALOGUE_BATCH_MAX = env_int("CATALOGUE_BATCH_MAX", 20)
# API writes need `Authorization: Bearer <token>`. Only SHA-256 digests of the tokens are
# configured (name:hexdigest, comma-separated), so the environment file gives no write access.
# Tokens are long random strings from the vault, so a fast hash is enough.
CATALOGUE_API_TOKEN_HASHES = env_list("CATALOGUE_API_TOKEN_HASHES", "")
# A product read counts one view per client and product in this many seconds; the count is
# written by a task, never by the request.
CATALOGUE_VIEW_WINDOW = env_int("CATALOGUE_VIEW_WINDOW", 3600)
# The client's address as nginx saw it (X-Real-IP), else the peer's (a direct connection).
CATALOGUE_CLIENT_ADDRESS_HEADER = env("CATALOGUE_CLIENT_ADDRESS_HEADER", "HTTP_X_REAL_IP")
CATALOGUE_READINESS_TIMEOUT = env_float("CATALOGUE_READINESS_TIMEOUT", 2.0)
# Seconds one round of readiness checks answers every /readyz (a burst costs one round).
CATALOGUE_READINESS_CACHE = env_float("CATALOGUE_READINESS_CACHE", 1.0)
CATALOGUE_READINESS_CHECKS = {
    "postgresql": "catalogue.health.check_postgresql",
    "redis": "catalogue.health.check_redis",
    "rabbitmq": "catalogue.health.check_rabbitmq",
    "elasticsearch": "catalogue.health.check_elasticsearch",
    "mongodb": "catalogue.health.check_mongodb",
}
IMAGE_FETCH_TIMEOUT = env_float("IMAGE_FETCH_TIMEOUT", 3.0)
IMAGE_FETCH_MAX_RETRIES = env_int("IMAGE_FETCH_MAX_RETRIES", 4)
IMAGE_FETCH_BACKOFF_BASE = env_float("IMAGE_FETCH_BACKOFF_BASE", 2.0)
IMAGE_FETCH_BACKOFF_CAP = env_float("IMAGE_FETCH_BACKOFF_CAP", 60.0)
# Refuse image URLs that resolve to private, loopback or link-local addresses (SSRF guard).
IMAGE_FETCH_ALLOW_PRIVATE = env_bool("IMAGE_FETCH_ALLOW_PRIVATE", False)
# Addresses and networks never fetched from, private or not: every host of the deployment.
IMAGE_FETCH_DENY = env_list("IMAGE_FETCH_DENY", "")
# A batch's image fetches run at most this many at once (threads of one slow-queue task).
IMAGE_FETCH_CONCURRENCY = 8
INDEXING_BACKOFF_CAP = env_int("INDEXING_BACKOFF_CAP", 300)
# Fixed caps of the other retrying tasks (seconds).
INSERT_BACKOFF_CAP = 120
RECONCILE_BACKOFF_CAP = 300

# --- Metrics (catalogue/metrics.py) --------------------------------------------------------------
# /metrics answers only a request with the bearer token whose SHA-256 hex digest this is (the
# environment file holds the digest, not the token); empty, /metrics does not exist.
CATALOGUE_METRICS_TOKEN_HASH = env("CATALOGUE_METRICS_TOKEN_HASH", "")

# --- The submission outbox (catalogue.models.Submission) ----------------------------------------
# A submission taken by a worker and not done by its deadline is sent again: at least this long
# after its send, each further send waiting twice as long, up to the cap, and at least
# CATALOGUE_CLAIM_LEASE after the worker took it. One sent and never taken is sent again once a
# probe published after it has come back through the queues (it was dropped), however long the
# backlog. The beat runs the re-drive every CATALOGUE_REDRIVE_INTERVAL seconds
# (CELERY_BEAT_SCHEDULE above).
CATALOGUE_REDRIVE_AFTER = env_int("CATALOGUE_REDRIVE_AFTER", 120)
CATALOGUE_REDRIVE_BACKOFF_CAP = env_int("CATALOGUE_REDRIVE_BACKOFF_CAP", 3600)
CATALOGUE_REDRIVE_BATCH = 500  # submissions sent again per beat run at most
CATALOGUE_SUBMISSION_RETENTION_DAYS = env_int("CATALOGUE_SUBMISSION_RETENTION_DAYS", 7)
# Seconds a client is told to wait (Retry-After) when a submission cannot be recorded.
CATALOGUE_RETRY_AFTER = env_int("CATALOGUE_RETRY_AFTER", 5)

# --- How long a worker may hold a message --------------------------------------------------------
# With acks_late a message stays unacknowledged from delivery until its task ends, and a retry's
# message waits out its countdown in the worker, unacknowledged too. RabbitMQ closes the channel
# of a consumer that holds a delivery longer than its consumer_timeout (30 min by default) and
# delivers the message again: the longest hold must stay below it, or a slow retry is run twice
# and its worker loses its channel.
RABBITMQ_CONSUMER_TIMEOUT = env_int("RABBITMQ_CONSUMER_TIMEOUT", 1800)
_longest_hold = CELERY_TASK_TIME_LIMIT + max(
    INDEXING_BACKOFF_CAP, IMAGE_FETCH_BACKOFF_CAP, INSERT_BACKOFF_CAP, RECONCILE_BACKOFF_CAP
)
if _longest_hold >= RABBITMQ_CONSUMER_TIMEOUT:
    raise ImproperlyConfigured(
        f"CELERY_TASK_TIME_LIMIT plus the longest retry countdown (INDEXING_BACKOFF_CAP,"
        f" IMAGE_FETCH_BACKOFF_CAP, {RECONCILE_BACKOFF_CAP} s) is {_longest_hold:g} s: it must"
        f" stay below RABBITMQ_CONSUMER_TIMEOUT ({RABBITMQ_CONSUMER_TIMEOUT} s)"
    )

# A claimed submission is sent again only after the longest a worker may hold its task.
CATALOGUE_CLAIM_LEASE = _longest_hold
# Seconds between a submission's sent_at and its message reaching the queue, at most (the commit
# and publish after it): a probe must be this much younger to vouch that the message was dropped.
CATALOGUE_PUBLISH_SLACK = 30

# --- Misc ----------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", "INFO")},
}
