"""Housekeeping jobs for the audit trail: the reaper, retention and the metrics rollup."""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .metrics import fold_executions
from .models import Status, TaskExecution
from .signals import replay_spool

logger = logging.getLogger(__name__)

# Past its hard time limit a task is dead; the grace covers clock skew and slow shutdowns.
LOST_GRACE = timedelta(minutes=1)
PURGE_BATCH = 5000


@shared_task(name="monitoring.reap_lost")
def reap_lost(now_iso: str | None = None) -> dict[str, int]:
    """Write spooled audit rows; mark `lost` the rows left `started` by workers that died.

    No task runs past its hard time limit, so a row still `started` after that is an attempt
    whose worker is gone. A redelivered attempt marks its predecessors itself; this catches the
    rest, such as a task whose message was never redelivered.
    """
    replayed = replay_spool()
    now = timezone.datetime.fromisoformat(now_iso) if now_iso else timezone.now()
    cutoff = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT) - LOST_GRACE
    lost = TaskExecution.objects.filter(status=Status.STARTED, started_at__lt=cutoff).update(
        status=Status.LOST,
        finished_at=now,
        error_type="WorkerLost",
        error_message="still started past the hard time limit: the worker running it died",
    )
    if lost:
        logger.warning("event=executions_lost count=%d", lost)
    return {"lost": lost, "replayed": replayed}


@shared_task(name="monitoring.purge_executions")
def purge_executions(days: int | None = None, batch: int = PURGE_BATCH) -> dict[str, int]:
    """Delete executions older than NEWSBEAT_EXECUTION_RETENTION_DAYS, in id-ordered batches.

    Each batch is its own short transaction that deletes by primary key, so inserts of new
    rows never wait behind one long delete.
    """
    days = settings.NEWSBEAT_EXECUTION_RETENTION_DAYS if days is None else days
    cutoff = timezone.now() - timedelta(days=days)
    old = TaskExecution.objects.filter(started_at__lt=cutoff).order_by("id")
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(old.values_list("id", flat=True)[:batch])
            if not ids:
                break
            deleted += TaskExecution.objects.filter(id__in=ids).delete()[0]
    logger.info("event=executions_purged count=%d older_than_days=%d", deleted, days)
    return {"deleted": deleted}


@shared_task(name="monitoring.rollup_executions")
def rollup_executions(now_iso: str | None = None) -> dict[str, int]:
    """Fold the executions that finished up to ROLLUP_LAG ago into the totals /metrics reads,
    so that a scrape reads only the last few minutes of the audit table (metrics.py)."""
    now = timezone.datetime.fromisoformat(now_iso) if now_iso else timezone.now()
    folded = fold_executions(now)
    logger.info("event=executions_rolled_up count=%d", folded)
    return {"folded": folded}
