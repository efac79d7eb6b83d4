"""The Celery app, wired as in celery's examples/django."""

import os

from celery import Celery

from catalogue import worker_metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalogue_site.settings.production")

# DjangoTask adds delay_on_commit()/apply_async_on_commit() to every task.
app = Celery("catalogue_site", task_cls="celery.contrib.django.task:DjangoTask")
# Every CELERY_-prefixed Django setting configures Celery (CELERY_BROKER_URL -> broker_url).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The worker's own figures (tasks by state, their runtime), where its unit asks for them.
worker_metrics.connect()
