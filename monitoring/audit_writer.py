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
returns, when the INSERT has left the process (on loopback it is then in PostgreSQL's socket
buffer; to another host, in this machine's kernel, on the wire within microseconds, like the
acknowledgement that follows it). PostgreSQL runs a statement it received even if the client
is gone by then (it only notices when it answers), so a pool child killed right after a task
loses nothing (tests/monitoring/test_audit_writer.py kills one). What an answer says is still
checked: an error (a constraint, the database shutting down) or a connection that breaks with a
row unanswered sends that row the ordinary way, through Django's connection, after checking it
is not in the table already; that path spools it to Redis when the database refuses
(signals.py). A row whose answer does not come within ANSWER_TIMEOUT may still be waiting on a
lock in its backend: that backend is ended first, so the row cannot land twice. A connection
that died while idle (a restart, an idle timeout) is noticed before a row is sent into it. The
commit does not wait for the WAL to reach the disk unless NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT is
on: the loss window, a crash of PostgreSQL or its machine within ~0.6 s of a task's end, is
unchanged.

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
# The longest wait for the answer to the previous row before the next one is sent; also the
# writer's statement_timeout.
ANSWER_TIMEOUT = 30.0
# A connection unused this long is checked before a row is trusted to it.
IDLE_CHECK_AFTER = 0.5


class AuditWriter:
    """One per process (see `writer()`); threads share it under its lock.

    `fallback(row)` writes a row the ordinary way and says whether it could (signals.
    write_row_once); it is given every row this writer could not confirm, and must not write
    one that is already in the table. It runs outside the lock, so the other threads' rows
    do not queue behind a slow fallback.

    A row whose answer never came (a timeout, a broken connection) may still be running in its
    backend, waiting on a lock: `terminate(pid)` ends that backend first (the fallback's own
    connection runs pg_terminate_backend, which waits for it to be gone), so the fallback's
    check for the row sees the outcome and the row is never written twice.
    """

    def __init__(
        self,
        sql: str,
        params: Callable[[dict[str, Any]], list[Any]],
        fallback: Callable[[dict[str, Any]], bool],
        terminate: Callable[[int], None],
    ):
        self._sql = sql
        self._params = params
        self._fallback = fallback
        self._terminate = terminate
        self._lock = threading.Lock()
        self._wrapper: Any = None
        self._backend_pid = 0
        self._unanswered: dict[str, Any] | None = None
        self._last_answer = 0.0
        self._retry_at = 0.0

    def write(self, row: dict[str, Any]) -> bool:
        """Send `row` (a finished TaskExecution row as {attname: value}). Never raises for
        database errors: what cannot be sent or confirmed goes to the fallback. True when the
        row was sent, or written by the fallback; False when the fallback had to keep it."""
        with self._lock:
            failed = self._answer(block=True)
            sent = self._connected() and self._send(row, failed)
        settled = self._settle(failed)
        return settled if sent else self._fallback(row)

    def poll(self) -> None:
        """Read an answer that has arrived, without waiting: an idle process's last row is
        confirmed (or sent the ordinary way) within a writer tick (signals.py); a connection
        that died while idle is noticed before the next row is trusted to it."""
        if self._wrapper is None or not self._lock.acquire(blocking=False):
            return
        try:
            failed = self._answer(block=False)
        finally:
            self._lock.release()
        self._settle(failed)

    def close(self) -> None:
        with self._lock:
            failed = self._answer(block=True)
            if self._wrapper is not None:
                self._wrapper.close()
                self._wrapper = None
        self._settle(failed)

    # --- outside the lock ----------------------------------------------------------------
    def _settle(self, failed: list[tuple[dict[str, Any], int]]) -> bool:
        """Hand rows this writer could not confirm to the fallback, after ending the backend
        that may still be running one of them (its pid, 0 when the row surely did not run).
        False when the fallback could not write one of them."""
        written = True
        for row, pid in failed:
            if pid:
                self._terminate(pid)
            written = self._fallback(row) and written
        return written

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
            # Bounds a row stuck behind a lock (it then goes to the fallback) and the setup.
            conn.execute(f"SET statement_timeout = {int(ANSWER_TIMEOUT * 1000)}")
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
        self._backend_pid = conn.info.backend_pid
        self._transformer = Transformer(conn)
        self._last_answer = time.monotonic()
        return True

    def _send(self, row: dict[str, Any], failed: list) -> bool:
        """Send `row`; False (and the row not sent) when it cannot be. Failures after the
        statement went out add the row to `failed`, with the backend that may run it."""
        try:
            params = self._params(row)
            dumped = self._transformer.dump_sequence(params, [PyFormat.TEXT] * len(params))
        except Exception:
            # This row cannot be encoded; the connection is fine.
            logger.exception("event=audit_error step=encode task_id=%s", row.get("task_id"))
            return False
        pgconn = self._wrapper.connection.pgconn
        try:
            if time.monotonic() - self._last_answer > IDLE_CHECK_AFTER:
                # Not worth a system call per row when rows come back to back.
                _check_idle(pgconn)
            pgconn.send_query_prepared(STATEMENT, dumped)
        except Exception as error:
            self._broken(error)
            return False
        self._unanswered = row
        try:
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while pgconn.flush():
                if time.monotonic() > deadline:
                    raise TimeoutError("PostgreSQL does not read the audit row")
                _wait(pgconn.socket, write=True)
        except Exception as error:
            failed.append((row, self._backend_pid))
            self._unanswered = None
            self._broken(error)
            return True  # handed to the fallback: written or spooled there
        return True

    def _answer(self, block: bool) -> list[tuple[dict[str, Any], int]]:
        """Read the answer to the row sent last, if any. Returns the rows for the fallback: the
        row, when it was refused or its answer cannot be read."""
        if self._wrapper is None:
            return []
        pgconn = self._wrapper.connection.pgconn
        row = self._unanswered
        try:
            if row is None:
                if not block:  # poll(): is the connection still there?
                    _check_idle(pgconn)
                return []
            deadline = time.monotonic() + ANSWER_TIMEOUT
            error = None
            while True:
                pgconn.consume_input()
                if pgconn.is_busy():
                    if not block:
                        return []
                    if time.monotonic() > deadline:
                        raise TimeoutError("no answer from PostgreSQL to an audit row")
                    _wait(pgconn.socket, write=False)
                    continue
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status != pq.ExecStatus.COMMAND_OK:
                    error = result.get_error_message()
        except Exception as broken:
            pid = self._backend_pid
            self._unanswered = None
            self._broken(broken)
            return [] if row is None else [(row, pid)]
        self._unanswered = None
        self._last_answer = time.monotonic()
        if error is None:
            return []
        logger.error("event=audit_error step=finish task_id=%s error=%s", row.get("task_id"), error)
        # A terminated backend answers with an error, then closes the connection.
        if pgconn.status != pq.ConnStatus.OK:
            self._broken(RuntimeError(error))
        # An error answer means the statement ended: no backend to wait for.
        return [(row, 0)]

    def _broken(self, error: BaseException) -> None:
        logger.warning("event=audit_writer_down error=%s", str(error).strip()[:300])
        if self._wrapper is not None:
            # The connection is broken already; closing it may say so again.
            with contextlib.suppress(Exception):
                self._wrapper.close()
        self._wrapper = None
        self._retry_at = time.monotonic() + RETRY_AFTER


def _check_idle(pgconn: Any) -> None:
    """Raise if an idle connection is being ended: a backend ended by a restart, an idle timeout
    or pg_terminate_backend says goodbye (an error message, then end of file, which may come a
    moment later), and the next statement would go into a dead socket with no error. A healthy
    idle connection has nothing to read: one poll() with no wait. Anything else that arrives
    unasked (a setting changed by a failover) is reason enough to reconnect."""
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    if not poller.poll(0):
        return
    pgconn.consume_input()  # raises at the end of file
    raise ConnectionError("the server sent data to an idle audit connection: reconnecting")


def _wait(sock: int, write: bool) -> None:
    """Wait up to a second for the socket (poll, not select: file descriptors past 1024)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    poller.poll(1000)


_writer: AuditWriter | None = None
_writer_pid: int | None = None
_writer_lock = threading.Lock()


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
        with _writer_lock:  # the first tasks of a threads pool arrive together
            if _writer_pid != os.getpid():
                _writer, _writer_pid = make(), os.getpid()
    return _writer
