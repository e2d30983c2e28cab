"""What must hold after any fault test: nothing lost, nothing twice, nothing stuck."""

import json
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from monitoring.models import FINISHED_STATUSES, Status, TaskExecution
from pipeline.models import Article, SentimentPoint


def queued_ids(broker, queue: str = "celery") -> set[str]:
    """Task ids waiting in the queue or delivered and not yet acknowledged."""
    waiting = {json.loads(raw)["headers"]["id"] for raw in broker.lrange(queue, 0, -1)}
    unacked = {json.loads(raw)[0]["headers"]["id"] for raw in broker.hvals("unacked")}
    return waiting | unacked


def assert_invariants(published: set[str], broker) -> None:
    finished = set(
        TaskExecution.objects.filter(task_id__in=published, status__in=FINISHED_STATUSES)
        .exclude(status=Status.RETRYING)
        .values_list("task_id", flat=True)
    )
    missing = published - finished - queued_ids(broker)
    assert not missing, f"published tasks with no final row and not queued: {missing}"

    limit = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    stuck = TaskExecution.objects.filter(
        status=Status.STARTED, started_at__lt=timezone.now() - limit
    )
    assert not stuck.exists(), f"rows started past the time limit: {list(stuck)}"

    twice = Article.objects.values("source", "guid").annotate(n=Count("id")).filter(n__gt=1)
    assert not twice.exists(), f"articles stored twice: {list(twice)}"
    points = (
        SentimentPoint.objects.values("entity", "period_start", "period_length")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert not points.exists(), f"sentiment points stored twice: {list(points)}"
