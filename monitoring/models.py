from datetime import timedelta

from django.core.validators import MinValueValidator
from django.db import models
from django_celery_beat.models import PeriodicTask


class Status(models.TextChoices):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    REVOKED = "revoked"
    EXPIRED = "expired"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    LOST = "lost"


# States after which the row does not change again.
FINISHED_STATUSES = frozenset(Status) - {Status.STARTED}


class TaskExecution(models.Model):
    """One execution attempt of one Celery task: written when it starts, finished when it ends.

    A retry or a redelivery of the same task id gets a row of its own, so the history shows
    every attempt; `attempt` is Celery's retry count plus one.
    """

    task_id = models.CharField(max_length=255)
    task_name = models.CharField(max_length=255)
    # The django-celery-beat PeriodicTask name when beat (or "run now") sent the task.
    periodic_task_name = models.CharField("job", max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTED)
    attempt = models.PositiveIntegerField(default=1)
    worker = models.CharField(max_length=255, blank=True, default="")
    queue = models.CharField(max_length=255, blank=True, default="")
    # Truncated JSON text, so that a huge argument cannot bloat the audit table.
    args = models.TextField(blank=True, default="")
    kwargs = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=255, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    parent_id = models.CharField(max_length=255, blank=True, default="")
    root_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            # Admin list, newest first, and its date hierarchy.
            models.Index(fields=["-started_at"], name="execution_started_idx"),
            # Search by task id; the reaper and the audit hook's fallback look rows up by it.
            models.Index(fields=["task_id"], name="execution_task_id_idx"),
            # Admin filters by status and by task, each newest first.
            models.Index(fields=["status", "-started_at"], name="execution_status_idx"),
            models.Index(fields=["task_name", "-started_at"], name="execution_task_idx"),
            # Health view: last success of each periodic job.
            models.Index(
                fields=["periodic_task_name", "status", "-started_at"], name="execution_job_idx"
            ),
            # Admin filter by job; health's last run and last N outcomes of a job; the status
            # page's last 50 runs and its 7-day window. Only the rows of periodic jobs, a small
            # share of the table (most rows are the fetches they fan out).
            models.Index(
                fields=["periodic_task_name", "-started_at"],
                name="execution_job_run_idx",
                condition=~models.Q(periodic_task_name=""),
            ),
            # The children of an execution (a fan-out's fetches) in time order, linked from its
            # admin page.
            models.Index(fields=["parent_id", "started_at"], name="execution_parent_idx"),
            # The metrics rollup: the rows that finished after its watermark (metrics.py).
            models.Index(fields=["finished_at"], name="execution_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.task_id} attempt {self.attempt}: {self.status}"


class JobPolicy(models.Model):
    """How much lateness a periodic job is allowed: healthchecks.io's grace time, per job.

    A row of its own, one-to-one with django-celery-beat's PeriodicTask, rather than a field on
    it (its table is not ours) or JSON in its `description` (text an operator edits by hand). It
    is edited inline on the job's admin page and leaves with the job when the job is deleted.
    """

    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.CASCADE, primary_key=True, related_name="policy"
    )
    grace = models.DurationField(
        null=True,
        blank=True,
        validators=[MinValueValidator(timedelta(0))],
        help_text="How long past due the job may be before it is down. Empty: one period of its "
        "schedule.",
    )

    class Meta:
        verbose_name = "health policy"
        verbose_name_plural = "health policy"

    def __str__(self) -> str:
        return f"health policy of {self.periodic_task.name}"


class ExecutionTotal(models.Model):
    """How many executions of a task finished with a status and a duration in one histogram
    bucket, and their durations' sum: the rollup /metrics reads instead of the whole audit
    table, and which retention does not purge (monitoring/metrics.py).

    `le` is the bucket's upper bound as Prometheus writes it ("0.5", "+Inf"); "" for the
    executions that recorded no duration. Rows only ever grow, under ExecutionRollup's lock.
    """

    task_name = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices)
    le = models.CharField(max_length=16, blank=True)
    count = models.BigIntegerField(default=0)
    duration_sum = models.DurationField(default=timedelta(0))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["task_name", "status", "le"], name="execution_total_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.status} le={self.le or '-'}: {self.count}"


class ExecutionRollup(models.Model):
    """The single row that says up to when ExecutionTotal holds the finished executions:
    every row with `finished_at <= folded_until` is in it (None: nothing folded yet).

    Folding locks this row (SELECT ... FOR UPDATE), so two folds never count a row twice.
    """

    folded_until = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"executions folded until {self.folded_until}"
