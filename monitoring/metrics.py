"""`GET /metrics`: Prometheus text format, computed from the database on each scrape.

Reading the audit table (not in-process counters) keeps the numbers right across any number of
worker processes and hosts.
"""

from typing import Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .health import jobs_report
from .models import TaskExecution

JOB_STATUSES = ("new", "up", "late", "down", "paused")


class DatabaseCollector:
    def collect(self) -> Any:
        executions = CounterMetricFamily(
            "newsbeat_task_executions",
            "Task executions recorded in the audit table, by task and status.",
            labels=["task", "status"],
        )
        rows = TaskExecution.objects.values("task_name", "status").annotate(n=Count("id"))
        for row in rows.order_by("task_name", "status"):
            executions.add_metric([row["task_name"], row["status"]], row["n"])
        yield executions

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
        for name, job in jobs_report(timezone.now()).items():
            if job["last_success"]:
                moment = timezone.datetime.fromisoformat(job["last_success"])
                last_success.add_metric([name], moment.timestamp())
            for value in JOB_STATUSES:
                status.add_metric([name, value], 1.0 if job["status"] == value else 0.0)
        yield last_success
        yield status


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
