"""The naive audit hook, the reference of the audit overhead benchmark: one ORM insert when the
task starts, one update when it ends, nothing else (no spool, no error details)."""

from typing import Any

from celery import signals
from django.utils import timezone

from monitoring.models import Status, TaskExecution
from monitoring.signals import describe_request

_pks: dict[str, int] = {}


def on_task_prerun(sender: Any = None, task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    fields = describe_request(task, task.request)
    _pks[task_id] = TaskExecution.objects.create(started_at=timezone.now(), **fields).pk


def on_task_postrun(sender: Any = None, task_id: str = "", state: str = "", **kwargs: Any) -> None:
    status = Status.SUCCEEDED if state == "SUCCESS" else Status.FAILED
    TaskExecution.objects.filter(pk=_pks.pop(task_id)).update(
        status=status, finished_at=timezone.now()
    )


def connect() -> None:
    signals.task_prerun.connect(on_task_prerun, dispatch_uid="bench.naive.prerun")
    signals.task_postrun.connect(on_task_postrun, dispatch_uid="bench.naive.postrun")
