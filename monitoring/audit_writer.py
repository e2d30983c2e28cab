"""Send a task's final audit row to PostgreSQL without waiting for the answer.

The one INSERT per task (signals.py) used to be a round trip: the pool child sent the statement
and sat idle until PostgreSQL had parsed, planned, inserted and committed it. On a busy machine
that wait is a scheduling delay of the PostgreSQL backend, 0.2-1 ms, longer than a short task,
and it took 10-25 % off the worker's throughput (bench/RESULTS.md, target 1).

This writer keeps a connection of its own per process (a second `DatabaseWrapper` configured
like Django's, so the settings' OPTIONS apply) with the INSERT prepared once, and for each row:

1. reads the answer to the previous row, which has almost always arrived by then (waiting for it
   if not, so at most one row is ever unanswered);
2. sends the new row's Bind/Execute/Sync and returns as soon as the bytes are on the socket.

Why the row is as safe as before: the task's message is acknowledged after `task_postrun`
returns, when the INSERT is already in PostgreSQL's socket buffer. PostgreSQL runs a query it
received even if the client is gone by then (it only notices when it answers), so a pool child
killed right after a task loses nothing. What an answer says is still checked: an error (a
constraint, the database shutting down) or a connection that breaks with a row unanswered sends
that row the ordinary way, through Django's connection, after checking it is not in the table
already; that path spools it to Redis when the database refuses (signals.py). The commit does
not wait for the WAL to reach the disk unless NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT is on: the loss
window, a crash of PostgreSQL or its machine within ~0.6 s of a task's end, is unchanged.

Not used on SQLite (`make run`), for eager tasks, or inside a transaction (tests): there
`insert_row` in signals.py writes through Django's connection and waits, as before. A
PostgreSQL `client_connection_check_interval` set above 0 would cancel a row whose child died
within the millisecond its statement takes; it is off by default.

Considered: psycopg's pipeline mode (`Connection.pipeline()`) queues statements in one implicit
transaction until a sync and its `sync()` waits for the results; libpq's lower level, the same
library underneath, sends a Sync per row and reads later. The whole row pushed to Redis, to be
moved to PostgreSQL in batches, gained little (0.82 against 0.76 of the no-hook throughput, in
separate runs under load): a round trip to Redis is a wait too.
"""

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

logger = logging.getLogger(__name__)

STATEMENT = b"newsbeat_audit_insert"
# After a failure to connect or send, rows take the ordinary path for this long.
RETRY_AFTER = 5.0
# The longest wait for the answer to the previous row before the next one is sent.
ANSWER_TIMEOUT = 30.0


class AuditWriter:
    """One per process (see `writer()`); threads share it under its lock.

    `fallback(row)` writes a row the ordinary way and says whether it could (signals.
    write_row_once); it is given every row this writer could not confirm, and must not write
    one that is already in the table.
    """

    def __init__(self, sql: str, params: Callable[[dict[str, Any]], list[Any]], fallback):
        self._sql = sql
        self._params = params
        self._fallback = fallback
        self._lock = threading.Lock()
        self._wrapper: Any = None
        self._unanswered: dict[str, Any] | None = None
        self._retry_at = 0.0
        self.sent = 0

    def write(self, row: dict[str, Any]) -> bool:
        """Send `row` (a finished TaskExecution row as {attname: value}). Never raises for
        database errors: what cannot be sent or confirmed goes to the fallback. True when the
        row was sent, or written by the fallback; False when the fallback had to keep it."""
        with self._lock:
            self._answer(block=True)
            if not self._connected():
                return self._fallback(row)
            try:
                self._send(row)
            except Exception as error:
                self._unanswered = None
                self._broken(error)
                return self._fallback(row)
            return True

    def poll(self) -> None:
        """Read an answer that has arrived, without waiting: an idle process's last row is
        confirmed (or sent the ordinary way) within a writer tick (signals.py)."""
        if self._unanswered is None or not self._lock.acquire(blocking=False):
            return
        try:
            self._answer(block=False)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._answer(block=True)
            if self._wrapper is not None:
                self._wrapper.close()
                self._wrapper = None

    # --- inside the lock -----------------------------------------------------------------
    def _connected(self) -> bool:
        if self._wrapper is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        # Configured as Django's own connection, so OPTIONS (sslmode, timeouts) apply.
        default = connections[DEFAULT_DB_ALIAS]
        wrapper = type(default)(dict(default.settings_dict), alias="newsbeat-audit")
        # Used from the pool's threads and the started-row thread, always under the lock.
        wrapper.inc_thread_sharing()
        try:
            wrapper.ensure_connection()
            conn = wrapper.connection
            if not getattr(settings, "NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT", False):
                conn.execute("SET synchronous_commit TO off")
            result = conn.pgconn.prepare(STATEMENT, self._sql.encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise RuntimeError(result.get_error_message())
        except Exception as error:
            self._wrapper = wrapper
            self._broken(error)
            return False
        self._wrapper = wrapper
        self._transformer = Transformer(conn)
        return True

    def _send(self, row: dict[str, Any]) -> None:
        pgconn = self._wrapper.connection.pgconn
        params = self._params(row)
        dumped = self._transformer.dump_sequence(params, [PyFormat.TEXT] * len(params))
        pgconn.send_query_prepared(STATEMENT, dumped)
        self._unanswered = row
        while pgconn.flush():
            select.select([], [pgconn.socket], [], 1.0)
        self.sent += 1

    def _answer(self, block: bool) -> None:
        """Read the answer to the row sent last, if any; a failure sends it the ordinary way."""
        if self._unanswered is None:
            return
        try:
            pgconn = self._wrapper.connection.pgconn
            deadline = time.monotonic() + ANSWER_TIMEOUT
            error = None
            while True:
                pgconn.consume_input()
                if pgconn.is_busy():
                    if not block:
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError("no answer from PostgreSQL to an audit row")
                    select.select([pgconn.socket], [], [], 1.0)
                    continue
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status != pq.ExecStatus.COMMAND_OK:
                    error = result.get_error_message()
        except Exception as broken:
            self._broken(broken)
            row, self._unanswered = self._unanswered, None
            self._fallback(row)
            return
        row, self._unanswered = self._unanswered, None
        if error is not None:
            logger.error(
                "event=audit_error step=finish task_id=%s error=%s", row.get("task_id"), error
            )
            # A terminated backend answers with an error, then closes the connection.
            if pgconn.status != pq.ConnStatus.OK:
                self._broken(RuntimeError(error))
            self._fallback(row)

    def _broken(self, error: BaseException) -> None:
        logger.warning("event=audit_writer_down error=%s", str(error).strip()[:300])
        if self._wrapper is not None:
            # The connection is broken already; closing it may say so again.
            with contextlib.suppress(Exception):
                self._wrapper.close()
        self._wrapper = None
        self._retry_at = time.monotonic() + RETRY_AFTER


_writer: AuditWriter | None = None
_writer_pid: int | None = None


def has_writer() -> bool:
    return _writer_pid == os.getpid()


def close_writer(**kwargs: Any) -> None:
    """Read the last row's answer and close the connection: a row refused at the very end
    still goes to the fallback. Connected to worker_process_shutdown (a pool child's exit) and
    worker_shutdown (a threads-pool worker's)."""
    global _writer, _writer_pid
    if has_writer() and _writer is not None:
        _writer.close()
    _writer, _writer_pid = None, None


def writer(make: Callable[[], AuditWriter]) -> AuditWriter:
    """This process's writer (a forked pool child makes its own: a connection is not shared)."""
    global _writer, _writer_pid
    if _writer_pid != os.getpid():
        _writer, _writer_pid = make(), os.getpid()
    return _writer
