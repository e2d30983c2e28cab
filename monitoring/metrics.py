"""`GET /metrics`: Prometheus text format, computed from the database on each scrape.

Reading the audit table (not in-process counters) keeps the numbers right across any number of
worker processes and hosts. The counters count the rows the table holds, so they drop when
retention purges old rows; Prometheus reads a drop as a counter reset.
"""

import logging
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from .guards import redis_client
from .health import job_statuses
from .models import TaskExecution

logger = logging.getLogger(__name__)

JOB_STATUSES = ("new", "up", "late", "down", "paused")
# Upper bounds (seconds) of the duration histogram's buckets: a fetch takes about a second, the
# hard time limit is minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Kombu's Redis transport keeps a queue's prioritised messages in lists of their own, named
# queue + "\x06\x16" + priority, for priority steps 3, 6 and 9 (0 is the queue itself).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_names() -> list[str]:
    """NEWSBEAT_METRICS_QUEUES: the Celery queues whose length /metrics reports."""
    return list(getattr(settings, "NEWSBEAT_METRICS_QUEUES", ["celery"]))


def task_rows() -> list[dict[str, Any]]:
    """Per task and status: the number of rows, the number with a duration, their sum, and
    how many of them took at most each bucket's bound. One GROUP BY over the table."""
    buckets = {
        f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
        for i, bound in enumerate(DURATION_BUCKETS)
    }
    return list(
        TaskExecution.objects.values("task_name", "status")
        .annotate(n=Count("id"), timed=Count("duration"), total=Sum("duration"), **buckets)
        .order_by("task_name", "status")
    )


def execution_metrics(rows: list[dict[str, Any]]) -> Any:
    executions = CounterMetricFamily(
        "newsbeat_task_executions",
        "Task executions recorded in the audit table, by task and status.",
        labels=["task", "status"],
    )
    for row in rows:
        executions.add_metric([row["task_name"], row["status"]], row["n"])
    yield executions

    # Histogram per task, over every status's rows that have a duration.
    per_task: dict[str, dict[str, Any]] = {}
    for row in rows:
        task = per_task.setdefault(
            row["task_name"], {"count": 0, "sum": 0.0, "le": [0] * len(DURATION_BUCKETS)}
        )
        task["count"] += row["timed"]
        task["sum"] += row["total"].total_seconds() if row["total"] else 0.0
        for i in range(len(DURATION_BUCKETS)):
            task["le"][i] += row[f"le_{i}"]
    durations = HistogramMetricFamily(
        "newsbeat_task_duration_seconds",
        "How long task executions ran, by task (executions that recorded a duration).",
        labels=["task"],
    )
    for name, task in per_task.items():
        buckets = [(str(float(b)), n) for b, n in zip(DURATION_BUCKETS, task["le"], strict=True)]
        buckets.append(("+Inf", task["count"]))
        durations.add_metric([name], buckets, task["sum"])
    yield durations


def job_metrics(now: datetime) -> Any:
    last_success = GaugeMetricFamily(
        "newsbeat_job_last_success_timestamp_seconds",
        "Start time of the periodic job's last successful run.",
        labels=["job"],
    )
    status = GaugeMetricFamily(
        "newsbeat_job_status",
        "1 for the periodic job's current status.",
        labels=["job", "status"],
    )
    overdue = GaugeMetricFamily(
        "newsbeat_job_overdue_seconds",
        "How long past due the periodic job is (0 when it is not, or when paused).",
        labels=["job"],
    )
    for job in job_statuses(now):
        if job.last_success:
            last_success.add_metric([job.name], job.last_success.timestamp())
        for value in JOB_STATUSES:
            status.add_metric([job.name, value], 1.0 if job.status == value else 0.0)
        overdue.add_metric([job.name], job.overdue(now).total_seconds())
    yield last_success
    yield status
    yield overdue


def queue_metrics() -> Any:
    """Messages waiting in each queue: the broker's Redis lists. Left out when Redis does not
    answer, so that the database's metrics are still scraped."""
    names = queue_names()
    try:
        pipe = redis_client().pipeline(transaction=False)
        for name in names:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(name + suffix)
        lengths = pipe.execute()
    except redis.RedisError:
        logger.warning("event=metrics_queue_length_unavailable", exc_info=True)
        return
    waiting = GaugeMetricFamily(
        "newsbeat_queue_length", "Messages waiting in the broker queue.", labels=["queue"]
    )
    step = len(PRIORITY_SUFFIXES)
    for i, name in enumerate(names):
        waiting.add_metric([name], sum(lengths[i * step : (i + 1) * step]))
    yield waiting


class DatabaseCollector:
    def collect(self) -> Any:
        now = timezone.now()
        yield from execution_metrics(task_rows())
        yield from job_metrics(now)
        yield from queue_metrics()


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
