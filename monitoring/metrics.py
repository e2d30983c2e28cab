"""`GET /metrics`: Prometheus text format, computed from the database on each scrape.

Reading the database (not in-process counters) keeps the numbers right across any number of
worker processes and hosts. The execution counters and the duration histogram count finished
executions (rows with a `finished_at`; a running one is counted once it ends). They come from
a rollup: every minute `monitoring.rollup_executions` folds the rows that finished between the
watermark and ROLLUP_LAG ago into ExecutionTotal and moves the watermark; a scrape reads
ExecutionTotal plus the rows that finished after the watermark, through the finished_at index.
So a scrape costs the same at any table size, is exact as of its moment, and the counters do
not go down when retention purges old rows (those were folded long before).

Where it can still be off (none counts an execution twice):
- A row committed more than ROLLUP_LAG after its `finished_at` is never counted, and an earlier
  scrape that saw it (committed after the fold read, before the fold committed) counted it once:
  the counter then drops by that row. Rows are committed within a second of finishing except
  the audit spool's, replayed when the database is back (reap_lost, every 5 minutes; the
  worker's next write), and a worker clock behind the database's by more than ROLLUP_LAG.
  ROLLUP_LAG covers a database outage of about 5 minutes.
- Rows purged before they were folded (the rollup stopped for the whole retention period).
- While the rollup does not run (beat down) scrapes read ever more recent rows: right, slower.
  Before its first run after deploy they read the whole table, once, as before.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, CharField, Count, QuerySet, Sum, Value, When
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
from .models import ExecutionRollup, ExecutionTotal, TaskExecution

logger = logging.getLogger(__name__)

JOB_STATUSES = ("new", "up", "late", "down", "paused")
# Upper bounds (seconds) of the duration histogram's buckets: a fetch takes about a second, the
# hard time limit is minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# How long after finishing a row is folded into the rollup: rows are committed out of order
# (a slow commit, a worker's clock behind) and the audit spool writes rows late; one that
# arrives after its time was folded is never counted. The spool is replayed within 5 minutes
# of the database coming back (reap_lost), so this covers outages up to about 5 minutes.
ROLLUP_LAG = timedelta(minutes=10)
# Kombu's Redis transport keeps a queue's prioritised messages in lists of their own, named
# queue + "\x06\x16" + priority, for priority steps 3, 6 and 9 (0 is the queue itself).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_names() -> list[str]:
    """NEWSBEAT_METRICS_QUEUES: the Celery queues whose length /metrics reports."""
    return list(getattr(settings, "NEWSBEAT_METRICS_QUEUES", ["celery"]))


def duration_bucket() -> Case:
    """A row's histogram bucket as ExecutionTotal.le: the first bound its duration is within,
    "+Inf" past the last, "" with no duration."""
    return Case(
        When(duration__isnull=True, then=Value("")),
        *[
            When(duration__lte=timedelta(seconds=bound), then=Value(str(float(bound))))
            for bound in DURATION_BUCKETS
        ],
        default=Value("+Inf"),
        output_field=CharField(),
    )


def finished_groups(rows: QuerySet) -> list[dict[str, Any]]:
    """The finished executions among `rows`, grouped as ExecutionTotal rows: task_name, status,
    le, count, duration_sum (None when none of them has a duration)."""
    return list(
        rows.filter(finished_at__isnull=False)
        .annotate(le=duration_bucket())
        .values("task_name", "status", "le")
        .annotate(count=Count("id"), duration_sum=Sum("duration"))
        .order_by()
    )


def fold_executions(now: datetime) -> int:
    """Add the executions that finished in (folded_until, now - ROLLUP_LAG] to ExecutionTotal
    and move the watermark to the end of that window. Returns how many it added.

    One transaction that locks the watermark row first: a second fold waits for the first to
    commit, then reads the watermark the first one moved, so no row is counted twice.
    """
    until = now - ROLLUP_LAG
    with transaction.atomic():
        mark, _ = ExecutionRollup.objects.select_for_update().get_or_create(pk=1)
        folded = mark.folded_until
        if folded is not None and folded >= until:
            return 0
        rows = TaskExecution.objects.filter(finished_at__lte=until)
        if folded is not None:
            rows = rows.filter(finished_at__gt=folded)
        groups = finished_groups(rows)
        add_totals(groups)
        # Conditional on the value read, as healthchecks' sendalerts does: under the lock no
        # one can have moved it, and if someone did, roll back rather than count twice.
        moved = ExecutionRollup.objects.filter(pk=1, folded_until=folded).update(
            folded_until=until, updated=now
        )
        if moved != 1:
            raise RuntimeError(f"execution rollup watermark moved from {folded} meanwhile")
    return sum(group["count"] for group in groups)


def add_totals(groups: list[dict[str, Any]]) -> None:
    """Add `groups` (see finished_groups) to ExecutionTotal; the caller holds the rollup lock.
    The table has a row per task, status and bucket: a few hundred at most."""
    totals = {(t.task_name, t.status, t.le): t for t in ExecutionTotal.objects.all()}
    changed, new = [], []
    for group in groups:
        key = (group["task_name"], group["status"], group["le"])
        total = totals.get(key)
        if total is None:
            total = ExecutionTotal(task_name=key[0], status=key[1], le=key[2])
            new.append(total)
        else:
            changed.append(total)
        total.count += group["count"]
        total.duration_sum += group["duration_sum"] or timedelta(0)
    ExecutionTotal.objects.bulk_update(changed, ["count", "duration_sum"])
    ExecutionTotal.objects.bulk_create(new)


@contextmanager
def one_snapshot() -> Iterator[None]:
    """A transaction whose reads all see the database as of one moment (REPEATABLE READ on
    PostgreSQL), so that a fold committing between them cannot make a scrape count a row twice
    or miss it. Inside a transaction already (tests), that transaction's."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


def execution_groups() -> list[dict[str, Any]]:
    """The rollup's totals plus the executions that finished after its watermark (the last
    ROLLUP_LAG and a minute, through the finished_at index): every finished execution.
    All of them when nothing is folded yet."""
    with one_snapshot():
        folded = ExecutionRollup.objects.values_list("folded_until", flat=True).first()
        totals = list(
            ExecutionTotal.objects.values("task_name", "status", "le", "count", "duration_sum")
        )
        recent = TaskExecution.objects.all()
        if folded is not None:
            recent = recent.filter(finished_at__gt=folded)
        return totals + finished_groups(recent)


def execution_metrics(groups: list[dict[str, Any]]) -> Any:
    counts: dict[tuple[str, str], int] = {}
    # Per task, over every status's executions that have a duration.
    per_task: dict[str, dict[str, Any]] = {}
    for group in groups:
        key = (group["task_name"], group["status"])
        counts[key] = counts.get(key, 0) + group["count"]
        if not group["le"]:
            continue
        task = per_task.setdefault(
            group["task_name"], {"count": 0, "sum": 0.0, "le": [0] * len(DURATION_BUCKETS)}
        )
        task["count"] += group["count"]
        task["sum"] += group["duration_sum"].total_seconds() if group["duration_sum"] else 0.0
        if group["le"] != "+Inf":
            for i, bound in enumerate(DURATION_BUCKETS):
                if float(group["le"]) <= bound:
                    task["le"][i] += group["count"]

    executions = CounterMetricFamily(
        "newsbeat_task_executions",
        "Task executions that finished, by task and status.",
        labels=["task", "status"],
    )
    for (name, status), n in sorted(counts.items()):
        executions.add_metric([name, status], n)
    yield executions

    durations = HistogramMetricFamily(
        "newsbeat_task_duration_seconds",
        "How long task executions ran, by task (finished executions that recorded a duration).",
        labels=["task"],
    )
    for name, task in sorted(per_task.items()):
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
        yield from execution_metrics(execution_groups())
        yield from job_metrics(now)
        yield from queue_metrics()


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
