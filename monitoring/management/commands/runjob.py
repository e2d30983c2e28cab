import json
import time

from celery import current_app
from django.core.management.base import BaseCommand, CommandError
from django_celery_beat.models import PeriodicTask

from monitoring.models import FINISHED_STATUSES, Status, TaskExecution


class Command(BaseCommand):
    help = (
        "Run a periodic job now, through the same path as beat and the admin's 'Run selected "
        "tasks': audited, and skipped if its previous run still holds the job's lock."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the periodic job's name, e.g. poll-news")
        parser.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="wait up to SECONDS for the run to finish and report how it ended",
        )

    def handle(self, *args, name: str, wait: float | None = None, **options):
        job = PeriodicTask.objects.filter(name=name).first()
        if job is None:
            known = ", ".join(PeriodicTask.objects.order_by("name").values_list("name", flat=True))
            raise CommandError(f"no periodic job named {name!r} (known: {known})")
        result = current_app.send_task(
            job.task,
            args=json.loads(job.args or "[]"),
            kwargs=json.loads(job.kwargs or "{}"),
            queue=job.queue or None,
            headers={**json.loads(job.headers or "{}"), "periodic_task_name": job.name},
        )
        self.stdout.write(f"{name}: sent {job.task} as task {result.id}")
        if not job.enabled:
            self.stdout.write(f"{name}: note: the job is paused; this run was sent anyway")
        if wait is None:
            return
        row = self.wait_for_row(result.id, wait)
        if row is None:
            raise CommandError(f"{name}: task {result.id} did not finish within {wait:g} s")
        detail = f" ({row.error_type}: {row.error_message})" if row.error_type else ""
        self.stdout.write(f"{name}: {row.status} in {row.duration}{detail}")
        if row.status != Status.SUCCEEDED:
            raise CommandError(f"{name}: the run ended {row.status}")

    def wait_for_row(self, task_id: str, timeout: float) -> TaskExecution | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = (
                TaskExecution.objects.filter(task_id=task_id, status__in=FINISHED_STATUSES)
                .order_by("-id")
                .first()
            )
            if row is not None and row.status != Status.RETRYING:
                return row
            time.sleep(0.2)
        return None
