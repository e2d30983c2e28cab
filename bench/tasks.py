"""Tasks the benchmarks send to real workers (loaded with `celery worker --include bench.tasks`)."""

import json
import time

from celery import shared_task
from django.conf import settings

from monitoring.broker import redis_client
from monitoring.signals import header

from . import naive

TICKS_KEY = "bench:ticks"

if getattr(settings, "BENCH_AUDIT", "") == "naive":
    naive.connect()


@shared_task(name="bench.noop")
def noop() -> None:
    return None


@shared_task(name="bench.tick", bind=True)
def tick(self) -> None:
    """A 1-second job: note when it started and which schedule slot beat sent it for."""
    record = {
        "job": header(self.request, "periodic_task_name"),
        "slot": header(self.request, "periodic_slot"),
        "started": time.time(),
    }
    redis_client().rpush(TICKS_KEY, json.dumps(record))
