"""Unit tests: no service at all. SQLite in memory, local-memory cache, in-memory documents.

Tasks are not sent anywhere: the tests either call them directly or assert what was enqueued by
patching the publish call (the broker boundary).
"""

from .base import *  # noqa: F403

SECRET_KEY = "unit-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CELERY_BROKER_URL = "memory://localhost/"
CELERY_RESULT_BACKEND = "cache+memory://"
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {}
ELASTICSEARCH_URL = "http://search.invalid:9200"
CATALOGUE_DOCUMENT_STORE = "catalogue.documents.MemoryStore"
# In production the postgresql role owns the partitioned events table; here Django creates it.
CATALOGUE_EVENTS_TABLE_MANAGED = True
# The API token the unit tests' client sends (tests/conftest.py); only its digest is configured.
API_TEST_TOKEN = "unit-test-token-0123456789abcdef"
CATALOGUE_API_TOKEN_HASHES = [
    "tests:" + __import__("hashlib").sha256(API_TEST_TOKEN.encode()).hexdigest()
]
CATALOGUE_READINESS_CACHE = 0.0
