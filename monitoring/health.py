"""Health views for uptime probes.

`/health/live/` answers while the process serves. `/health/` checks the database and the broker
and derives each enabled periodic job's status from its audit rows, the way healthchecks.io
derives a check's status from its last ping: computed on read from one `now`.
"""

import copy
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from celery.schedules import crontab
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_celery_beat.models import PeriodicTask

from .models import Status, TaskExecution

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 1.0


def next_run(schedule: Any, after: datetime) -> datetime:
    """When `schedule` (a Celery schedule) next fires after `after`."""
    if isinstance(schedule, crontab):
        # Celery's crontab measures from its own now(); pin that to `after` to ask when it
        # fires next after `after`. (Across a DST change this can be an hour off: issue 5.)
        pinned = copy.copy(schedule)
        pinned.nowfun = lambda: after
        return after + pinned.remaining_estimate(after)
    return after + schedule.run_every


def period_of(schedule: Any, at: datetime) -> timedelta:
    """The time between the two runs that follow `at` (constant for interval schedules)."""
    first = next_run(schedule, at)
    return next_run(schedule, first) - first


@dataclass(frozen=True)
class JobState:
    status: str  # new, up, late, down, paused
    next_due: datetime | None


def job_state(
    *,
    enabled: bool,
    schedule: Any,
    created: datetime,
    last_success: datetime | None,
    now: datetime,
    grace: timedelta | None = None,
) -> JobState:
    """A periodic job's status.

    The job is due one period after its last success (or after it was created, when it never
    succeeded); it is `late` past that and `down` once a grace time more has passed. The grace
    defaults to one period, so "down" means no success within two periods.
    """
    if not enabled:
        return JobState("paused", None)
    reference = last_success or created
    due = next_run(schedule, reference)
    grace = grace if grace is not None else period_of(schedule, reference)
    if now > due + grace:
        return JobState("down", due)
    if last_success is None:
        return JobState("new", due)
    return JobState("late" if now > due else "up", due)


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "up"
    except DatabaseError:
        logger.warning("event=health_check component=database status=down", exc_info=True)
        return "down"


def check_broker() -> str:
    try:
        with current_app.connection_for_read(
            connect_timeout=BROKER_TIMEOUT,
            transport_options={"socket_timeout": BROKER_TIMEOUT, "max_retries": 0},
        ) as conn:
            # One attempt: a probe must answer within its budget, not wait for retries.
            conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT)
        return "up"
    except Exception as exc:  # kombu raises transport-specific errors; any of them means down.
        logger.warning("event=health_check component=broker status=down error=%s", type(exc))
        return "down"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def jobs_report(now: datetime) -> dict[str, dict[str, Any]]:
    report = {}
    for job in PeriodicTask.objects.select_related("interval", "crontab").order_by("name"):
        if job.interval is None and job.crontab is None:
            continue  # clocked and solar schedules have no recurring due time to check
        runs = TaskExecution.objects.filter(periodic_task_name=job.name).order_by("-started_at")
        last_run = runs.values_list("started_at", flat=True).first()
        last_success = (
            runs.filter(status=Status.SUCCEEDED).values_list("started_at", flat=True).first()
        )
        state = job_state(
            enabled=job.enabled,
            schedule=job.schedule,
            created=job.start_time or job.date_changed,
            last_success=last_success,
            now=now,
        )
        report[job.name] = {
            "status": state.status,
            "task": job.task,
            "last_run": iso(last_run),
            "last_success": iso(last_success),
            "next_due": iso(state.next_due),
        }
    return report


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    now = timezone.now()
    components = {"database": check_database(), "broker": check_broker()}
    jobs: dict[str, dict[str, Any]] = {}
    if components["database"] == "up":
        try:
            jobs = jobs_report(now)
        except DatabaseError:
            logger.warning("event=health_check component=jobs status=down", exc_info=True)
            components["database"] = "down"
    healthy = all(s == "up" for s in components.values()) and not any(
        job["status"] == "down" for job in jobs.values()
    )
    body = {
        "status": "ok" if healthy else "fail",
        "checked_at": now.isoformat(),
        "components": {name: {"status": status} for name, status in components.items()},
        "jobs": jobs,
    }
    return JsonResponse(body, status=200 if healthy else 503)
