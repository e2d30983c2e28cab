"""`/status/`: every periodic job at a glance, for staff (the admin index shows the same table).

One row per job: its status (monitoring.health), last run, last success, next due, success rate
and p50/p95 duration over 24 hours and 7 days, and its last 50 runs drawn as an inline SVG bar
chart (no JavaScript, nothing fetched from elsewhere). Below, the panels other apps add through
NEWSBEAT_STATUS_PANELS, so that monitoring shows the pipeline's sources without importing it.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from math import ceil
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .health import OUTCOME_STATUSES, JobStatus, job_statuses
from .models import Status, TaskExecution

logger = logging.getLogger(__name__)

WINDOWS = (("24 h", timedelta(hours=24)), ("7 days", timedelta(days=7)))
CHART_RUNS = 50
CHART_HEIGHT = 32
BAR_WIDTH = 3
BAR_SLOT = 4  # bar and gap: 50 runs in 200 px
# Bar colours by outcome; anything else (skipped, expired, revoked, rejected) is grey.
BAR_FILLS = {
    Status.SUCCEEDED: "#2e7d32",
    Status.FAILED: "#c62828",
    Status.LOST: "#c62828",
    Status.RETRYING: "#ef6c00",
    Status.STARTED: "#1565c0",
}
OTHER_FILL = "#9e9e9e"


@dataclass(frozen=True)
class Run:
    status: str
    started_at: datetime
    seconds: float | None  # None while it runs, or when it never ran (expired, revoked)


@dataclass(frozen=True)
class WindowStats:
    label: str
    outcomes: int  # finished runs: succeeded, failed or lost
    success_percent: float | None
    p50: float | None  # seconds
    p95: float | None


@dataclass(frozen=True)
class Bar:
    x: int
    y: float
    width: int
    height: float
    fill: str
    title: str


@dataclass(frozen=True)
class JobRow:
    job: JobStatus
    windows: list[WindowStats]
    bars: list[Bar]


@dataclass(frozen=True)
class Panel:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    error: str = ""


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted `values` (an actual observed value); None if empty."""
    if not values:
        return None
    return values[max(0, ceil(fraction * len(values)) - 1)]


def window_stats(label: str, runs: list[Run]) -> WindowStats:
    """Success rate and duration percentiles of the finished runs among `runs`."""
    outcomes = [run for run in runs if run.status in OUTCOME_STATUSES]
    succeeded = sum(run.status == Status.SUCCEEDED for run in outcomes)
    durations = sorted(run.seconds for run in outcomes if run.seconds is not None)
    return WindowStats(
        label=label,
        outcomes=len(outcomes),
        success_percent=100 * succeeded / len(outcomes) if outcomes else None,
        p50=percentile(durations, 0.5),
        p95=percentile(durations, 0.95),
    )


def chart_bars(runs: list[Run], now: datetime) -> list[Bar]:
    """One bar per run, oldest to newest, the newest at the right edge; heights relative to
    the longest run, at least 2 px so that a run that took no time still shows."""
    runs = sorted(runs, key=lambda run: run.started_at)[-CHART_RUNS:]

    def seconds(run: Run) -> float:
        if run.seconds is not None:
            return run.seconds
        if run.status == Status.STARTED:  # still running: as long as it has run so far
            return max(0.0, (now - run.started_at).total_seconds())
        return 0.0

    longest = max((seconds(run) for run in runs), default=0.0) or 1.0
    bars = []
    offset = CHART_RUNS - len(runs)
    for i, run in enumerate(runs):
        height = max(2.0, round(CHART_HEIGHT * seconds(run) / longest, 1))
        started = timezone.localtime(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
        bars.append(
            Bar(
                x=(offset + i) * BAR_SLOT,
                y=round(CHART_HEIGHT - height, 1),
                width=BAR_WIDTH,
                height=height,
                fill=BAR_FILLS.get(run.status, OTHER_FILL),
                title=f"{started} {run.status} {seconds(run):.2f} s",
            )
        )
    return bars


def as_run(status: str, started_at: datetime, duration: timedelta | None) -> Run:
    return Run(status, started_at, duration.total_seconds() if duration is not None else None)


def job_rows(now: datetime) -> list[JobRow]:
    """The status table: one query for the jobs, one for their 7 days of finished runs, and
    one per job for its last 50 runs (each a short walk down execution_job_run_idx)."""
    jobs = job_statuses(now)
    longest = max(length for _, length in WINDOWS)
    recent: dict[str, list[Run]] = {job.name: [] for job in jobs}
    rows = TaskExecution.objects.filter(
        periodic_task_name__in=list(recent),
        started_at__gte=now - longest,
        started_at__lte=now,
        status__in=OUTCOME_STATUSES,
    ).values_list("periodic_task_name", "status", "started_at", "duration")
    for name, status, started_at, duration in rows:
        recent[name].append(as_run(status, started_at, duration))
    table = []
    for job in jobs:
        windows = [
            window_stats(label, [run for run in recent[job.name] if run.started_at >= now - length])
            for label, length in WINDOWS
        ]
        last = (
            TaskExecution.objects.filter(periodic_task_name=job.name)
            .order_by("-started_at", "-id")
            .values_list("status", "started_at", "duration")[:CHART_RUNS]
        )
        bars = chart_bars([as_run(*row) for row in last], now)
        table.append(JobRow(job, windows, bars))
    return table


def status_panels(now: datetime) -> list[Panel]:
    """The panels of NEWSBEAT_STATUS_PANELS: dotted paths to callables that take `now` and
    return (title, column names, rows). A panel that fails shows as failed; the page and the
    other panels still render."""
    panels = []
    for path in getattr(settings, "NEWSBEAT_STATUS_PANELS", []):
        try:
            title, columns, rows = import_string(path)(now)
        except Exception:  # another app's code: a broken panel must not take the page down
            logger.exception("event=status_panel_failed panel=%s", path)
            panels.append(Panel(path, [], [], error="failed; see the log"))
            continue
        panels.append(Panel(str(title), [str(c) for c in columns], [list(r) for r in rows]))
    return panels


def table_context(now: datetime) -> dict[str, Any]:
    """What monitoring/job_table.html needs (here and on the admin index)."""
    return {
        "now": now,
        "rows": job_rows(now),
        "windows": [label for label, _ in WINDOWS],
        "chart_runs": CHART_RUNS,
        "chart_width": CHART_RUNS * BAR_SLOT,
        "chart_height": CHART_HEIGHT,
    }


@never_cache
@require_GET
@staff_member_required
def status(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    context = {
        **admin.site.each_context(request),
        **table_context(now),
        "title": "Job status",
        "panels": status_panels(now),
    }
    return render(request, "monitoring/status.html", context)
