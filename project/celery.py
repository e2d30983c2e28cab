"""The Celery app, configured from Django settings (the CELERY_ block in project/settings.py)."""

import logging.config
import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Every task gets the scheduling guards (no overlap, one run per slot, poison detection).
app = Celery("newsbeat", task_cls="monitoring.guards:GuardedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def configure_logging(**kwargs) -> None:
    # Use Django's LOGGING instead of letting Celery install its own root handlers.
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
