"""Celery signal hooks that write one TaskExecution row per task execution attempt.

A short task costs one write: nothing at `task_prerun`, one INSERT of the finished row at
`task_postrun`. A task still running after STARTED_ROW_AFTER (1 s) gets its `started` row from a
background thread of the process running it, and `task_postrun` then UPDATEs that row instead.
Writing at both ends took 40 % off the throughput of no-op tasks (bench/RESULTS.md); this way a
short task pays for one insert, and a long task, for which one write more does not matter,
still shows as `started` while it runs.

The finished row is sent in `task_postrun`, which returns before the worker acknowledges the
message (acks_late): a task whose message was acknowledged has its row in the database, or in
the Redis spool when the database was down. In a worker on PostgreSQL the INSERT goes out on a
connection of the process's own and the answer is read later (audit_writer.py: why that loses
nothing); elsewhere (SQLite, eager tasks, inside a transaction) it waits on Django's connection.

`task_failure` and `task_retry` fire before `task_postrun` in the same process, so they only
remember the error for that final write.

A worker that dies takes its tasks' state with it. A task that had run past the first second
left a `started` row, which its redelivery (or the reaper) marks `lost`; a task that died sooner
left nothing, so its redelivery writes the `lost` row for it.

Audit writes never fail a task: every hook catches `DatabaseError`, logs it with the task id and
lets the task carry on. When the started row could not be written, the final write inserts the
whole row instead, so a database that comes back during the task still gets the record.
"""

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import signals
from celery.exceptions import Retry
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, models
from django.db.models import DurationField, ExpressionWrapper, F
from django.db.models.functions import Now
from django.utils import timezone

from . import audit_writer as _audit_writer
from .audit_writer import AuditWriter, close_writer, writer
from .broker import KEY_PREFIX, redis_client
from .models import Status, TaskExecution

logger = logging.getLogger(__name__)

ARGS_MAX_CHARS = 2000
RESULT_MAX_CHARS = 4000
MESSAGE_MAX_CHARS = 4000
TRACEBACK_MAX_CHARS = 20000
# A task running this long gets its `started` row; the writer thread looks every _WRITER_TICK.
STARTED_ROW_AFTER = 1.0
_WRITER_TICK = 0.2

# task id -> the attempt: what its writes need. Keyed by task id, so thread and gevent pools
# work too. An attempt's "lock" orders the started-row write before the final one.
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
    # PostgreSQL text cannot hold NUL characters; an error message may.
    return {
        "error_type": type(exception).__qualname__[:255],
        "error_message": str(exception)[:MESSAGE_MAX_CHARS].replace("\x00", "\ufffd"),
        "traceback": (str(einfo.traceback) if einfo is not None else "")[
            -TRACEBACK_MAX_CHARS:
        ].replace("\x00", "\ufffd"),
    }


def on_task_prerun(sender: Any = None, task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    try:
        fields = describe_request(task, task.request)
    except Exception:
        logger.exception("event=audit_error step=describe task_id=%s", task_id)
        return
    started_at = timezone.now()
    _running[task_id] = {
        "fields": fields,
        "started_at": started_at,
        "t0": time.monotonic(),
        "pk": None,
        "lock": threading.Lock(),
        "done": False,
        "tried": False,
    }
    if (task.request.delivery_info or {}).get("redelivered"):
        try:
            mark_lost(task_id, started_at, fields)
        except DatabaseError:
            logger.exception("event=audit_error step=lost task_id=%s task=%s", task_id, task.name)
            close_old_connections()
    if not task.request.is_eager:
        start_row_writer()
    # DEBUG, as task_end: Celery logs every task received and how it ended at INFO already,
    # and a line more per task cost 1 % of the throughput of short tasks (bench/RESULTS.md).
    logger.debug(
        "event=task_start task_id=%s task=%s job=%s attempt=%s",
        task_id,
        fields["task_name"],
        fields["periodic_task_name"] or "-",
        fields["attempt"],
    )


def mark_lost(task_id: str, now: datetime, fields: dict[str, Any] | None = None) -> int:
    """A delivery of this task before this one did not finish: mark its rows still `started`
    `lost`. When it left none (it died within its first second, before its started row was
    written) and `fields` describes this attempt, write a `lost` row for it. Returns how many
    rows were marked or written.

    Redis also redelivers a message that a worker shutting down had taken but not started; its
    `lost` row then stands for a delivery that never ran, which the message says too.
    """
    lost = {
        "status": Status.LOST,
        "finished_at": now,
        "error_type": "WorkerLost",
        "error_message": "the worker died during this attempt; the task was delivered again",
    }
    marked = TaskExecution.objects.filter(task_id=task_id, status=Status.STARTED).update(**lost)
    if marked or fields is None:
        return marked
    lost["error_message"] = (
        "an earlier delivery of this task did not finish: its worker died within its first "
        "second, or stopped before running it; the task was delivered again"
    )
    TaskExecution.objects.create(started_at=now, **{**fields, "worker": ""}, **lost)
    return 1


# --- Started rows: written by one thread per process, for the tasks running past 1 s -----------
_writer_pid: int | None = None
_writer_lock = threading.Lock()


def start_row_writer() -> None:
    """Start this process's started-row writer unless it runs (threads do not survive fork, so
    each pool child starts its own)."""
    global _writer_pid
    if _writer_pid == os.getpid():
        return
    with _writer_lock:
        if _writer_pid == os.getpid():
            return
        threading.Thread(target=write_started_rows, name="audit-started-rows", daemon=True).start()
        _writer_pid = os.getpid()


def write_started_rows() -> None:
    while True:
        time.sleep(_WRITER_TICK)
        due = time.monotonic() - STARTED_ROW_AFTER
        try:
            # One C-level copy: the pool's threads add and remove attempts meanwhile.
            pending = [a for a in list(_running.values()) if a["t0"] <= due and not a["tried"]]
            for attempt in pending:
                write_started_row(attempt)
            if _audit_writer.has_writer():
                # Confirms an idle process's last row (or sends it the ordinary way).
                audit_writer().poll()
            if pending:
                # Rows are rare next to the tasks, and every pool child has this thread: an
                # idle connection kept for each would add up.
                connection.close()
        except Exception:
            logger.exception("event=audit_error step=started_rows")


def write_started_row(attempt: dict[str, Any]) -> None:
    with attempt["lock"]:
        if attempt["done"] or attempt["tried"]:
            return
        attempt["tried"] = True
        try:
            attempt["pk"] = TaskExecution.objects.create(
                started_at=attempt["started_at"], **attempt["fields"]
            ).pk
        except DatabaseError:
            # The final write will insert the whole row.
            task_id = attempt["fields"]["task_id"]
            logger.exception("event=audit_error step=start task_id=%s", task_id)


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
    # killing the child that ran the task, so no postrun may come. Finish the started row here.
    # (A task killed before its started row was written, by a hard limit under a second, has
    # its child write the row in the grace period between SIGTERM and SIGKILL, or has none.)
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
    row = {"started_at": running["started_at"], **running["fields"], **finished}
    # The lock waits for the writer thread should it be writing this task's started row now.
    with running["lock"]:
        running["done"] = True
        if running["pk"] is not None:
            pk = running["pk"]
            written = write_or_spool(
                row, lambda: TaskExecution.objects.filter(pk=pk).update(**finished)
            )
        elif sends_without_waiting(task):
            written = audit_writer().write(row)
        else:
            written = write_or_spool(row, lambda: insert_row(row))
    if _spooled_here and written:
        try:
            replay_spool()
        except DatabaseError:
            logger.exception("event=audit_error step=replay")
            close_old_connections()
    logger.debug(
        "event=task_end task_id=%s task=%s job=%s status=%s ms=%d",
        task_id,
        running["fields"]["task_name"],
        running["fields"]["periodic_task_name"] or "-",
        status,
        finished["duration"].total_seconds() * 1000,
    )


# --- The final write: one INSERT per task ------------------------------------------------------
# On PostgreSQL the statement also sets synchronous_commit off for its own transaction
# (set_config(..., true) in RETURNING): its commit does not wait for the WAL to reach the disk.
# Under disk contention that wait kept the pool child idle for 1 to 6 ms per task, longer than
# the task. The row is in the database before the worker acknowledges the task; only a crash
# of PostgreSQL or of its machine within about 0.6 s (3 x wal_writer_delay) of the commit loses
# it (bench/RESULTS.md). NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT = True waits for the disk instead.
_ASYNC_COMMIT = " RETURNING set_config('synchronous_commit', 'off', true)"


class _Insert:
    """The INSERT of a TaskExecution row, built once per process from the model."""

    def __init__(self) -> None:
        fields = [f for f in TaskExecution._meta.concrete_fields if not f.primary_key]
        quote = connection.ops.quote_name
        head = "INSERT INTO {} ({}) VALUES ".format(
            quote(TaskExecution._meta.db_table), ", ".join(quote(f.column) for f in fields)
        )
        self.sql = head + "({})".format(", ".join(["%s"] * len(fields)))
        self.asynchronous = connection.vendor == "postgresql" and not getattr(
            settings, "NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT", False
        )
        self.defaults = {f.attname: f.get_default() for f in fields}
        # Text goes to the database as it is; the other fields (times, JSON) need converting.
        text = (models.CharField, models.TextField, models.PositiveIntegerField)
        self.fields = [(f, type(f) in text) for f in fields]

    def params(self, row: dict[str, Any]) -> list[Any]:
        values = {**self.defaults, **row}
        return [
            values[f.attname] if text else f.get_db_prep_save(values[f.attname], connection)
            for f, text in self.fields
        ]


@functools.cache
def prepared_insert() -> _Insert:
    return _Insert()


def insert_row(row: dict[str, Any]) -> None:
    """INSERT one finished TaskExecution row given as {attname: value}; fields not named get
    their defaults.

    What `TaskExecution.objects.create(**row)` does, less the ORM compiling the statement on
    every call and returning the id, which nothing needs: half the client CPU of create().
    """
    insert = prepared_insert()
    sql = insert.sql
    # Inside a transaction (a task's own, a test's) the setting would last until its end.
    if insert.asynchronous and not connection.in_atomic_block:
        sql += _ASYNC_COMMIT
    with connection.cursor() as cursor:
        cursor.execute(sql, insert.params(row))


def sends_without_waiting(task: Any) -> bool:
    """Whether a final row goes through the AuditWriter (audit_writer.py): on PostgreSQL, in a
    worker (not an eager task) and outside a transaction, whose rollback must take the row."""
    return (
        getattr(settings, "NEWSBEAT_AUDIT_WRITER", True)
        and connection.vendor == "postgresql"
        and not task.request.is_eager
        and not connection.in_atomic_block
    )


def write_or_spool(row: dict[str, Any], write: Callable[[], Any]) -> bool:
    """Run `write` for a finished row; when the database fails, keep the row in the spool
    instead and return False."""
    try:
        write()
    except DatabaseError:
        logger.exception(
            "event=audit_error step=finish task_id=%s status=%s", row["task_id"], row["status"]
        )
        close_old_connections()
        spool_row(row)
        return False
    return True


def finished_row(row: dict[str, Any]) -> models.QuerySet:
    """The row as written: a write whose outcome was not known (the AuditWriter's connection
    broke, a replay) may have landed already."""
    return TaskExecution.objects.filter(
        task_id=row["task_id"], attempt=row["attempt"], finished_at=row["finished_at"]
    )


def write_row_once(row: dict[str, Any]) -> bool:
    """The AuditWriter's fallback: INSERT a row it could not confirm, unless it is in the table
    (its statement may have run before the connection broke). When the database fails, spool
    the row and return False."""

    def insert_unless_written() -> None:
        if not finished_row(row).exists():
            insert_row(row)

    return write_or_spool(row, insert_unless_written)


def end_backend(pid: int) -> None:
    """End the AuditWriter's old backend and wait for it (up to 5 s), so a row it may still be
    running is committed or gone before write_row_once looks for it."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    except DatabaseError:
        logger.warning("event=audit_error step=end_backend pid=%s", pid, exc_info=True)
        close_old_connections()


def audit_writer() -> AuditWriter:
    def make() -> AuditWriter:
        insert = prepared_insert()
        sql = insert.sql % tuple(f"${i}" for i in range(1, len(insert.fields) + 1))
        return AuditWriter(sql, insert.params, write_row_once, end_backend)

    return writer(make)


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
            finished = {k: v for k, v in record.items() if k != "started_at"}
            if not started.update(**finished) and not finished_row(record).exists():
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
                task_name=getattr(sender, "name", None) or getattr(request, "task", "") or "",
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
    """Connect the hooks; called once from MonitoringConfig.ready().

    `NEWSBEAT_AUDIT = False` leaves them out: the benchmarks' reference worker (bench/settings.py).
    """
    if not getattr(settings, "NEWSBEAT_AUDIT", True):
        logger.warning("event=audit_off")
        return
    signals.task_prerun.connect(on_task_prerun, dispatch_uid="monitoring.prerun")
    signals.task_postrun.connect(on_task_postrun, dispatch_uid="monitoring.postrun")
    signals.task_failure.connect(on_task_failure, dispatch_uid="monitoring.failure")
    signals.task_retry.connect(on_task_retry, dispatch_uid="monitoring.retry")
    signals.task_revoked.connect(on_task_revoked, dispatch_uid="monitoring.revoked")
    signals.task_unknown.connect(on_task_unknown, dispatch_uid="monitoring.unknown")
    signals.task_rejected.connect(on_task_rejected, dispatch_uid="monitoring.rejected")
    signals.worker_process_shutdown.connect(close_writer, dispatch_uid="monitoring.writer_child")
    signals.worker_shutdown.connect(close_writer, dispatch_uid="monitoring.writer")
