"""Celery signal hooks that write one TaskExecution row per task execution attempt.

Two writes per task: an INSERT at `task_prerun` (the row shows `started` while the task runs) and
an UPDATE at `task_postrun` with the outcome. `task_failure` and `task_retry` fire before
`task_postrun` in the same process, so they only remember the error for that final write.

Audit writes never fail a task: every hook catches `DatabaseError`, logs it with the task id and
lets the task carry on. When the start row could not be written, the final write inserts the
whole row instead, so a database that comes back during the task still gets the record.
"""

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import signals
from celery.exceptions import Retry
from django.db import DatabaseError, close_old_connections
from django.db.models import DurationField, ExpressionWrapper, F
from django.db.models.functions import Now
from django.utils import timezone

from .broker import KEY_PREFIX, redis_client
from .models import Status, TaskExecution

logger = logging.getLogger(__name__)

ARGS_MAX_CHARS = 2000
RESULT_MAX_CHARS = 4000
MESSAGE_MAX_CHARS = 4000
TRACEBACK_MAX_CHARS = 20000

# task id -> what the final write needs. Keyed by task id, so thread and gevent pools work too.
_running: dict[str, dict[str, Any]] = {}

_POSTRUN_STATUS = {
    "SUCCESS": Status.SUCCEEDED,
    "FAILURE": Status.FAILED,
    "RETRY": Status.RETRYING,
    "IGNORED": Status.SKIPPED,
    "REJECTED": Status.REJECTED,
}


def dumps_truncated(value: Any, limit: int) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarise_result(value: Any) -> Any:
    """The task's return value as JSON, or a truncated text when it is too large or not JSON."""
    if value is None:
        return None
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return {"repr": repr(value)[:RESULT_MAX_CHARS]}
    if len(text) > RESULT_MAX_CHARS:
        return {"truncated": text[:RESULT_MAX_CHARS]}
    return value


def header(request: Any, name: str) -> Any:
    """A custom message header: Celery exposes them as request attributes (protocol 2) or, for
    some transports and message versions, inside `request.headers`."""
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


def job_name(request: Any) -> str:
    """The periodic job that sent the task (django-celery-beat's `periodic_task_name` header)."""
    return str(header(request, "periodic_task_name") or "")[:200]


def note_error(task_id: str, error_type: str, message: str) -> None:
    """Remember why a running task ends the way it will, for its final audit write."""
    state = _running.get(task_id)
    if state is not None:
        state["error"] = {"error_type": error_type, "error_message": message[:MESSAGE_MAX_CHARS]}


def describe_request(task: Any, request: Any) -> dict[str, Any]:
    delivery = getattr(request, "delivery_info", None) or {}
    return {
        "task_id": request.id,
        "task_name": task.name,
        "periodic_task_name": job_name(request),
        "attempt": (request.retries or 0) + 1,
        "worker": (request.hostname or "")[:255],
        "queue": (delivery.get("routing_key") or delivery.get("exchange") or "")[:255],
        "args": dumps_truncated(list(request.args or ()), ARGS_MAX_CHARS),
        "kwargs": dumps_truncated(dict(request.kwargs or {}), ARGS_MAX_CHARS),
        "parent_id": request.parent_id or "",
        "root_id": request.root_id or "",
    }


def describe_error(exception: BaseException | None, einfo: Any) -> dict[str, str]:
    if exception is None:
        return {}
    return {
        "error_type": type(exception).__qualname__[:255],
        "error_message": str(exception)[:MESSAGE_MAX_CHARS],
        "traceback": (str(einfo.traceback) if einfo is not None else "")[-TRACEBACK_MAX_CHARS:],
    }


def on_task_prerun(sender: Any = None, task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    try:
        fields = describe_request(task, task.request)
    except Exception:
        logger.exception("event=audit_error step=describe task_id=%s", task_id)
        return
    started_at = timezone.now()
    state = {"fields": fields, "started_at": started_at, "t0": time.monotonic(), "pk": None}
    _running[task_id] = state
    try:
        if (task.request.delivery_info or {}).get("redelivered"):
            mark_lost(task_id, started_at)
        state["pk"] = TaskExecution.objects.create(started_at=started_at, **fields).pk
    except DatabaseError:
        # The final write will try to insert the whole row.
        logger.exception("event=audit_error step=start task_id=%s task=%s", task_id, task.name)
        close_old_connections()
    logger.info(
        "event=task_start task_id=%s task=%s job=%s attempt=%s",
        task_id,
        fields["task_name"],
        fields["periodic_task_name"] or "-",
        fields["attempt"],
    )


def mark_lost(task_id: str, now: datetime) -> int:
    """Rows of this task still `started` belong to attempts whose worker died: they are lost."""
    return TaskExecution.objects.filter(task_id=task_id, status=Status.STARTED).update(
        status=Status.LOST,
        finished_at=now,
        error_type="WorkerLost",
        error_message="the worker died during this attempt; the task was delivered again",
    )


def on_task_failure(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    einfo: Any = None,
    **kwargs: Any,
) -> None:
    state = _running.get(task_id)
    if state is not None:
        state["error"] = describe_error(exception, einfo)
        return
    # Not running in this process: the worker's main process reports a hard time limit after
    # killing the child that ran the task, so no postrun will come. Finish the row here.
    try:
        TaskExecution.objects.filter(task_id=task_id, status=Status.STARTED).update(
            status=Status.FAILED,
            finished_at=timezone.now(),
            duration=ExpressionWrapper(Now() - F("started_at"), output_field=DurationField()),
            **describe_error(exception, einfo),
        )
    except DatabaseError:
        logger.exception("event=audit_error step=failure task_id=%s", task_id)
        close_old_connections()


def on_task_retry(
    sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **kwargs: Any
) -> None:
    state = _running.get(getattr(request, "id", ""))
    if state is None:
        return
    # `reason` is Celery's Retry exception; the error that caused the retry is its `exc`.
    reason = getattr(reason, "exc", None) or reason
    if isinstance(reason, BaseException) and not isinstance(reason, Retry):
        state["error"] = describe_error(reason, einfo)
    else:
        state["error"] = {"error_type": "Retry", "error_message": str(reason)[:MESSAGE_MAX_CHARS]}


def on_task_postrun(
    sender: Any = None,
    task_id: str = "",
    task: Any = None,
    retval: Any = None,
    state: str | None = None,
    **kwargs: Any,
) -> None:
    running = _running.pop(task_id, None)
    if running is None:
        return
    status = _POSTRUN_STATUS.get(state or "", Status.FAILED)
    finished = {
        "status": status,
        "finished_at": timezone.now(),
        "duration": timedelta(seconds=time.monotonic() - running["t0"]),
        "result": summarise_result(retval) if status == Status.SUCCEEDED else None,
        **running.get("error", {}),
    }
    try:
        if running["pk"] is not None:
            TaskExecution.objects.filter(pk=running["pk"]).update(**finished)
        else:
            TaskExecution.objects.create(
                started_at=running["started_at"], **running["fields"], **finished
            )
    except DatabaseError:
        logger.exception("event=audit_error step=finish task_id=%s status=%s", task_id, status)
        close_old_connections()
        spool_row({"started_at": running["started_at"], **running["fields"], **finished})
    else:
        if _spooled_here:
            replay_spool()
    logger.info(
        "event=task_end task_id=%s task=%s job=%s status=%s ms=%d",
        task_id,
        running["fields"]["task_name"],
        running["fields"]["periodic_task_name"] or "-",
        status,
        finished["duration"].total_seconds() * 1000,
    )


# --- Spool: audit rows the database could not take, kept in Redis until it can -------------------
SPOOL_KEY = f"{KEY_PREFIX}audit-spool"
SPOOL_MAX = 100_000
_DATETIMES = ("started_at", "finished_at")
_spooled_here = False


def spool_row(row: dict[str, Any]) -> None:
    """Keep a finished row in Redis for `replay_spool`; if Redis fails too, log the whole row."""
    global _spooled_here
    record = {**row, "status": str(row["status"])}
    for field in _DATETIMES:
        record[field] = record[field].isoformat() if record.get(field) else None
    record["duration"] = row["duration"].total_seconds() if row.get("duration") else None
    try:
        client = redis_client()
        client.rpush(SPOOL_KEY, json.dumps(record, default=str))
        client.ltrim(SPOOL_KEY, -SPOOL_MAX, -1)
        _spooled_here = True
        logger.warning("event=audit_spooled task_id=%s status=%s", row["task_id"], row["status"])
    except redis.RedisError:
        logger.error("event=audit_lost row=%s", json.dumps(record, default=str))


def replay_spool(limit: int = 10_000) -> int:
    """Write spooled rows to the database: finish the `started` row of that attempt, or insert.

    Returns how many were written. A row goes back to the spool if the database fails again.
    """
    global _spooled_here
    client = redis_client()
    written = 0
    for _ in range(limit):
        raw = client.lpop(SPOOL_KEY)
        if raw is None:
            _spooled_here = False
            break
        record = json.loads(raw)
        for field in _DATETIMES:
            record[field] = datetime.fromisoformat(record[field]) if record[field] else None
        if record["duration"] is not None:
            record["duration"] = timedelta(seconds=record["duration"])
        try:
            started = TaskExecution.objects.filter(
                task_id=record["task_id"], attempt=record["attempt"], status=Status.STARTED
            )
            if not started.update(**{k: v for k, v in record.items() if k != "started_at"}):
                TaskExecution.objects.create(**record)
        except DatabaseError:
            client.lpush(SPOOL_KEY, raw)
            raise
        written += 1
    if written:
        logger.info("event=audit_replayed count=%d", written)
    return written


def on_task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **kwargs: Any,
) -> None:
    """A task revoked or expired before it ran (no prerun), or terminated while running."""
    if request is None:
        return
    status = Status.EXPIRED if expired else Status.REVOKED
    now = timezone.now()
    reason = "expired before it could start" if expired else "revoked"
    if terminated:
        reason = f"terminated by signal {signum}"
    fields = {
        "status": status,
        "finished_at": now,
        "error_type": "TaskRevokedError",
        "error_message": reason,
    }
    try:
        updated = TaskExecution.objects.filter(task_id=request.id, status=Status.STARTED).update(
            **fields
        )
        if not updated:
            TaskExecution.objects.create(
                task_id=request.id,
                task_name=getattr(request, "task_name", None) or getattr(request, "name", ""),
                periodic_task_name=job_name(request),
                worker=(getattr(request, "hostname", "") or "")[:255],
                started_at=now,
                **fields,
            )
    except DatabaseError:
        logger.exception("event=audit_lost step=revoked task_id=%s", request.id)
        close_old_connections()
    logger.info("event=task_%s task_id=%s", status, request.id)


def on_task_unknown(
    sender: Any = None, name: str = "", id: str = "", exc: Any = None, **kwargs: Any
) -> None:
    """A message for a task this worker does not know: Celery rejects it; record that."""
    record_rejected(id, name, exc)


def on_task_rejected(
    sender: Any = None, message: Any = None, exc: Any = None, **kwargs: Any
) -> None:
    """A message the worker could not decode or accept (for example a pickled body)."""
    headers = getattr(message, "headers", None) or {}
    record_rejected(headers.get("id", ""), headers.get("task", ""), exc)


def record_rejected(task_id: str, task_name: str, exc: Any) -> None:
    now = timezone.now()
    try:
        TaskExecution.objects.create(
            task_id=(task_id or "")[:255],
            task_name=(task_name or "")[:255],
            status=Status.REJECTED,
            started_at=now,
            finished_at=now,
            error_type=type(exc).__qualname__ if exc is not None else "",
            error_message=str(exc)[:MESSAGE_MAX_CHARS] if exc is not None else "",
        )
    except DatabaseError:
        logger.exception("event=audit_lost step=rejected task_id=%s", task_id)
        close_old_connections()
    logger.warning("event=task_rejected task_id=%s task=%s error=%s", task_id, task_name, exc)


def signals_connect() -> None:
    """Connect the hooks; called once from MonitoringConfig.ready()."""
    signals.task_prerun.connect(on_task_prerun, dispatch_uid="monitoring.prerun")
    signals.task_postrun.connect(on_task_postrun, dispatch_uid="monitoring.postrun")
    signals.task_failure.connect(on_task_failure, dispatch_uid="monitoring.failure")
    signals.task_retry.connect(on_task_retry, dispatch_uid="monitoring.retry")
    signals.task_revoked.connect(on_task_revoked, dispatch_uid="monitoring.revoked")
    signals.task_unknown.connect(on_task_unknown, dispatch_uid="monitoring.unknown")
    signals.task_rejected.connect(on_task_rejected, dispatch_uid="monitoring.rejected")
