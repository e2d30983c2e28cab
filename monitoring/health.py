"""Health views for uptime probes, and the job status they report.

`/health/live/` answers while the process serves. `/health/` checks the database and the broker
and derives each enabled periodic job's status from its audit rows, the way healthchecks.io
derives a check's status from its last ping: computed on read from one `now`.
`/health/?job=NAME` answers for one job, for per-job probes.

A job is due one period after its last success (its schedule says when: an interval later, or
the next crontab time in the schedule's zone). Past due it is `late`; once its grace time has
passed too it is `down`. It is also `down` when its last NEWSBEAT_DOWN_AFTER_FAILURES runs
failed in a row, however recent they are. A job that never succeeded is `new` until then, a
disabled one `paused`. The grace defaults to one period; a JobPolicy row sets it per job.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery import current_app
from celery.schedules import crontab
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import DateTimeField, F, Q, Subquery, Value
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_celery_beat.models import PeriodicTask

from .models import Status, TaskExecution

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 1.0
# How far ahead next_cron_time looks before it gives up (a 29 February that must also be a
# Monday comes round every 28 years).
CRON_HORIZON_DAYS = 366 * 30
# A run that ran to its end: what "the last N runs failed in a row" counts. Skipped, expired
# and revoked runs did not run; retrying ones are not finished yet.
FAILED_STATUSES = (Status.FAILED, Status.LOST)
OUTCOME_STATUSES = (Status.SUCCEEDED, *FAILED_STATUSES)


def down_after_failures() -> int:
    """NEWSBEAT_DOWN_AFTER_FAILURES: this many failed runs in a row make a job down (0: never)."""
    return int(getattr(settings, "NEWSBEAT_DOWN_AFTER_FAILURES", 3))


def cron_zone(schedule: crontab) -> ZoneInfo:
    # django-celery-beat's TzAwareCrontab carries its CrontabSchedule's zone; a plain crontab
    # uses the Celery app's.
    tz = schedule.tz
    return tz if isinstance(tz, ZoneInfo) else ZoneInfo(str(tz))


def fires_on(schedule: crontab, day: date) -> bool:
    # Celery fires on a day only when month, day of month and day of week all match (not
    # Vixie cron's "day of month OR day of week"); its day_of_week counts from Sunday = 0.
    return (
        day.month in schedule.month_of_year
        and day.day in schedule.day_of_month
        and day.isoweekday() % 7 in schedule.day_of_week
    )


def wall_clock_instants(
    day: date, hour: int, minute: int, zone: ZoneInfo, every_hour: bool
) -> list[datetime]:
    """The instants (UTC) at which the wall-clock time `day hour:minute` fires in `zone`.

    A time the clocks skip (spring forward: 02:30 in New York) fires as if the clocks had not
    moved yet, which lands it after the jump (03:30 EDT): Python's fold=0 reading. A time that
    happens twice (fall back: 01:30) fires at its first occurrence only, unless the job runs
    every hour, which then runs in the repeated hour too (as Vixie cron does).
    """
    first = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    instants = [first.astimezone(UTC)]
    second = first.replace(fold=1).astimezone(UTC)
    if every_hour and second > instants[0]:
        instants.append(second)
    return instants


def next_cron_time(schedule: crontab, after: datetime) -> datetime | None:
    """The first time after `after` at which `schedule` fires, in UTC.

    Celery's own `remaining_estimate` does the arithmetic on aware datetimes and goes wrong
    across DST changes: from a time in the schedule's zone it is an hour off (issue 5: after
    2026-10-31 06:00 America/New_York a daily 06:00 job came out at 07:00 EST, not 06:00), and
    from UTC, in the repeated hour, it answers times already past. Here each candidate is a
    local date and wall-clock time that the zone turns into an instant (wall_clock_instants).
    Returns None when the schedule does not fire within CRON_HORIZON_DAYS.
    """
    zone = cron_zone(schedule)
    every_hour = len(schedule.hour) == 24
    # Start a day early: a skipped time of the day before may land after `after`.
    day = after.astimezone(zone).date() - timedelta(days=1)
    for _ in range(CRON_HORIZON_DAYS):
        if fires_on(schedule, day):
            later = [
                instant
                for hour in schedule.hour
                for minute in schedule.minute
                for instant in wall_clock_instants(day, hour, minute, zone, every_hour)
                if instant > after
            ]
            if later:
                return min(later)
        day += timedelta(days=1)
    return None


def next_run(schedule: Any, after: datetime) -> datetime | None:
    """When `schedule` (a Celery interval or crontab schedule) next fires after `after`.

    None when a crontab never fires (see next_cron_time).
    """
    if isinstance(schedule, crontab):
        return next_cron_time(schedule, after)
    return after + schedule.run_every


def period_of(schedule: Any, at: datetime) -> timedelta:
    """The time from the first run after `at` to the one after it: a crontab's period changes
    with DST (a daily job's day lasts 23 or 25 hours) and with its fields. Zero when the
    schedule does not fire twice."""
    first = next_run(schedule, at)
    second = next_run(schedule, first) if first is not None else None
    return second - first if second is not None else timedelta(0)


@dataclass(frozen=True)
class JobState:
    status: str  # new, up, late, down, paused
    next_due: datetime | None
    # Why a job is down: "overdue" (no success within its grace) or "failing" (its last runs
    # failed in a row); empty otherwise.
    reason: str = ""


def job_state(
    *,
    enabled: bool,
    schedule: Any,
    created: datetime,
    last_success: datetime | None,
    now: datetime,
    grace: timedelta | None = None,
    failing: bool = False,
) -> JobState:
    """A periodic job's status at `now`.

    The job is due at the first run of its schedule after its last success (or after it was
    created, when it never succeeded); it is `late` past that and `down` once `grace` more
    has passed. The grace defaults to one period, so "down" means no success within two
    periods. `failing` (its last runs failed in a row) makes an enabled job `down` at once.
    `next_due` is None for a paused job and for a crontab that never fires.
    """
    if not enabled:
        return JobState("paused", None)
    reference = last_success or created
    due = next_run(schedule, reference)
    if failing:
        return JobState("down", due, "failing")
    if due is None:
        return JobState("up" if last_success else "new", None)
    grace = grace if grace is not None else period_of(schedule, reference)
    if now > due + grace:
        return JobState("down", due, "overdue")
    if last_success is None:
        return JobState("new", due)
    return JobState("late" if now > due else "up", due)


@dataclass(frozen=True)
class JobStatus:
    """A periodic job as the health view, the metrics and the status page report it."""

    name: str
    task: str
    enabled: bool
    status: str
    reason: str
    last_run: datetime | None
    last_success: datetime | None
    next_due: datetime | None

    def overdue(self, now: datetime) -> timedelta:
        """How long past due the job is at `now` (zero when it is not, or paused)."""
        if self.next_due is None or now <= self.next_due:
            return timedelta(0)
        return now - self.next_due


@dataclass(frozen=True)
class RunTimes:
    """When a job's runs started, from its audit rows."""

    last_run: datetime | None
    last_success: datetime | None
    # The start of its Nth latest finished run (N = NEWSBEAT_DOWN_AFTER_FAILURES).
    nth_last_outcome: datetime | None


def periodic_jobs(name: str | None = None) -> list[PeriodicTask]:
    """The periodic jobs with an interval or crontab schedule (clocked and solar ones have no
    recurring due time to check), each with its grace. Only the job `name`, when given."""
    jobs = (
        PeriodicTask.objects.filter(Q(interval__isnull=False) | Q(crontab__isnull=False))
        .select_related("interval", "crontab")
        .annotate(grace=F("policy__grace"))
        .order_by("name")
    )
    return list(jobs.filter(name=name) if name is not None else jobs)


def run_times(jobs: list[PeriodicTask]) -> dict[int, RunTimes]:
    """Each job's RunTimes, by job id: one query, whatever the number of jobs.

    One UNION ALL member per job, its name a literal in each subquery rather than a reference
    to the outer row: for a parameter the planner assumes the average job (a fifth of the
    table at 10M rows) and walks the started_at index newest first, a few hundred thousand
    rows for a daily job; for a literal it knows the job is rare and reads execution_job_idx
    or execution_job_run_idx, a few index entries each.
    """
    if not jobs:
        return {}
    failures = down_after_failures()
    members = []
    for job in jobs:
        runs = TaskExecution.objects.filter(periodic_task_name=job.name).order_by("-started_at")
        outcomes = runs.filter(status__in=OUTCOME_STATUSES).values("started_at")
        members.append(
            PeriodicTask.objects.filter(pk=job.pk)
            .order_by()
            .values("pk")
            .annotate(
                last_run=Subquery(runs.values("started_at")[:1]),
                last_success=Subquery(
                    runs.filter(status=Status.SUCCEEDED).values("started_at")[:1]
                ),
                nth_last_outcome=(
                    Subquery(outcomes[failures - 1 : failures])
                    if failures
                    else Value(None, output_field=DateTimeField())
                ),
            )
        )
    rows = members[0].union(*members[1:], all=True)
    return {
        row["pk"]: RunTimes(row["last_run"], row["last_success"], row["nth_last_outcome"])
        for row in rows
    }


def job_statuses(now: datetime, name: str | None = None) -> list[JobStatus]:
    """Every periodic job's status at `now` (only the job `name`, when given): two queries."""
    jobs = periodic_jobs(name)
    times = run_times(jobs)
    statuses = []
    for job in jobs:
        runs = times[job.pk]
        # The last N finished runs all came after the last success: they all failed.
        nth = runs.nth_last_outcome
        failing = nth is not None and (runs.last_success is None or runs.last_success < nth)
        state = job_state(
            enabled=job.enabled,
            schedule=job.schedule,
            created=job.start_time or job.date_changed,
            last_success=runs.last_success,
            now=now,
            grace=job.grace,
            failing=failing,
        )
        statuses.append(
            JobStatus(
                name=job.name,
                task=job.task,
                enabled=job.enabled,
                status=state.status,
                reason=state.reason,
                last_run=runs.last_run,
                last_success=runs.last_success,
                next_due=state.next_due,
            )
        )
    return statuses


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


def job_report(job: JobStatus) -> dict[str, Any]:
    return {
        "status": job.status,
        "reason": job.reason,
        "task": job.task,
        "last_run": iso(job.last_run),
        "last_success": iso(job.last_success),
        "next_due": iso(job.next_due),
    }


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and broker answer and no enabled job is down, else 503.

    With `?job=NAME` the jobs are that one job: 404 when there is no such periodic job.
    Never asks the workers anything (no broadcast): a probe must stay cheap.
    """
    now = timezone.now()
    name = request.GET.get("job")
    components = {"database": check_database(), "broker": check_broker()}
    jobs: list[JobStatus] = []
    if components["database"] == "up":
        try:
            jobs = job_statuses(now, name)
        except DatabaseError:
            logger.warning("event=health_check component=jobs status=down", exc_info=True)
            components["database"] = "down"
        else:
            if name is not None and not jobs:
                return JsonResponse({"error": f"no periodic job named {name!r}"}, status=404)
    healthy = all(s == "up" for s in components.values()) and not any(
        job.status == "down" for job in jobs
    )
    body = {
        "status": "ok" if healthy else "fail",
        "checked_at": now.isoformat(),
        "components": {part: {"status": status} for part, status in components.items()},
        "jobs": {job.name: job_report(job) for job in jobs},
    }
    return JsonResponse(body, status=200 if healthy else 503)
