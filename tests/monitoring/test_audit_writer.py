"""The AuditWriter (monitoring/audit_writer.py): final audit rows sent on a PostgreSQL connection
of its own, answers read later. What it sends must land exactly once, whatever happens to the
connection or the process between sending and reading the answer."""

import json
import select
import threading
import uuid
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from monitoring import audit_writer, signals
from monitoring.audit_writer import AuditWriter, close_writer
from monitoring.models import Status, TaskExecution
from tests import tasks
from tests.processes import wait_for


def a_row(**fields) -> dict:
    now = timezone.now()
    return {
        "task_id": str(uuid.uuid4()),
        "task_name": "tests.add",
        "status": Status.SUCCEEDED,
        "attempt": 1,
        "worker": "w1@host",
        "started_at": now - timedelta(milliseconds=3),
        "finished_at": now,
        "duration": timedelta(milliseconds=3),
        "result": {"sum": 5, "text": "naïve ' quote"},
        **fields,
    }


def rows_of(*task_ids: str) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(task_id__in=task_ids).order_by("id"))


@pytest.fixture
def fallen_back(monkeypatch):
    """Rows the writer handed to its fallback (then written as in production)."""
    rows = []

    def fallback(row):
        rows.append(row)
        return signals.write_row_once(row)

    return rows, fallback


@pytest.fixture
def writer(transactional_db, fallen_back):
    insert = signals.prepared_insert()
    sql = insert.sql % tuple(f"${i}" for i in range(1, len(insert.fields) + 1))
    made = AuditWriter(sql, insert.params, fallen_back[1], signals.end_backend)
    yield made
    made.close()


def writer_backend_pid(writer: AuditWriter) -> int:
    return writer._wrapper.connection.info.backend_pid


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: not backend_exists(pid), timeout=10)


def backend_exists(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


def test_rows_sent_are_the_rows_django_would_write(writer, fallen_back):
    sent = a_row(error_type="", traceback="")
    direct = {**a_row(), **{k: v for k, v in sent.items() if k != "task_id"}}

    writer.write(sent)
    signals.insert_row(direct)
    writer.close()  # reads the last answer

    via_writer, via_django = rows_of(sent["task_id"]), rows_of(direct["task_id"])
    fields = [
        f.attname for f in TaskExecution._meta.concrete_fields if f.attname not in ("id", "task_id")
    ]
    assert [getattr(via_writer[0], f) for f in fields] == [
        getattr(via_django[0], f) for f in fields
    ]
    assert via_writer[0].result == {"sum": 5, "text": "naïve ' quote"}
    assert fallen_back[0] == []


def test_the_commit_does_not_wait_for_the_disk_on_the_writers_connection(writer):
    writer.write(a_row())
    with writer._wrapper.connection.cursor() as cursor:
        writer._answer(block=True)
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "off"


def test_a_row_the_database_refuses_goes_to_the_fallback_and_then_the_spool(
    writer, fallen_back, broker
):
    refused = a_row(attempt=-1)  # violates the attempt >= 0 check
    fine = a_row()

    writer.write(refused)
    writer.write(fine)  # reads the refusal first
    writer.close()

    assert [r["task_id"] for r in fallen_back[0]] == [refused["task_id"]]
    assert rows_of(refused["task_id"]) == []
    assert len(rows_of(fine["task_id"])) == 1
    # The ordinary path refused it too: it waits in the spool with everything it said.
    [spooled] = [json.loads(r) for r in broker.lrange(signals.SPOOL_KEY, 0, -1)]
    assert (spooled["task_id"], spooled["attempt"]) == (refused["task_id"], -1)


def test_a_row_unanswered_when_the_connection_dies_is_written_once(writer, fallen_back):
    first = a_row()
    writer.write(first)
    writer._answer(block=True)
    # Hold the table so the next row waits in the writer's backend, uncommitted, then kill
    # that backend: the row was sent but never ran.
    blocker = psycopg.connect(**connection.get_connection_params(), autocommit=False)
    blocker.execute("LOCK TABLE monitoring_taskexecution IN ACCESS EXCLUSIVE MODE")
    lost_in_flight = a_row()
    writer.write(lost_in_flight)
    pid = writer_backend_pid(writer)
    wait_for(lambda: waiting_on_lock(pid), timeout=10)
    terminate(pid)
    blocker.rollback()
    blocker.close()

    after = a_row()
    writer.write(after)  # finds the broken connection: the unanswered row goes the other way
    writer.close()

    assert [r["task_id"] for r in fallen_back[0]] == [lost_in_flight["task_id"], after["task_id"]]
    for row in (first, lost_in_flight, after):
        assert len(rows_of(row["task_id"])) == 1


def waiting_on_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        found = cursor.fetchone()
        return bool(found) and found[0] == "Lock"


def test_a_row_committed_before_its_answer_was_read_is_not_written_again(writer, fallen_back):
    row = a_row()
    writer.write(row)
    wait_for(lambda: rows_of(row["task_id"]), timeout=10)
    # The answer is lost with the connection: the fallback must find the row and add nothing.
    writer._unanswered = row
    writer._wrapper.connection.pgconn.finish()

    writer.write(a_row())
    writer.close()

    assert [r["task_id"] for r in fallen_back[0]][:1] == [row["task_id"]]
    assert len(rows_of(row["task_id"])) == 1


def test_with_the_database_unreachable_rows_are_spooled_and_the_writer_waits_to_retry(
    writer, fallen_back, broker, monkeypatch
):
    writer.write(a_row())
    writer._answer(block=True)
    terminate(writer_backend_pid(writer))
    monkeypatch.setattr(signals, "insert_row", broken_insert)

    missed = [a_row(), a_row()]
    for row in missed:
        writer.write(row)

    assert [r["task_id"] for r in fallen_back[0]] == [r["task_id"] for r in missed]
    spooled = [json.loads(r)["task_id"] for r in broker.lrange(signals.SPOOL_KEY, 0, -1)]
    assert spooled == [r["task_id"] for r in missed]
    # Within RETRY_AFTER it does not try to connect again for every row.
    assert writer._wrapper is None


def broken_insert(row):
    from django.db import OperationalError

    raise OperationalError("the database is down")


def test_threads_share_one_writer(writer, fallen_back):
    rows = [a_row() for _ in range(200)]
    done = threading.Event()

    def send(part):
        for row in part:
            writer.write(row)

    def poll():  # the started-row thread's idle check, meanwhile
        while not done.is_set():
            writer.poll()

    threads = [threading.Thread(target=send, args=(rows[i::4],)) for i in range(4)]
    poller = threading.Thread(target=poll)
    for thread in [*threads, poller]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    poller.join()
    writer.close()

    assert fallen_back[0] == []
    assert len(rows_of(*[r["task_id"] for r in rows])) == 200


@pytest.mark.integration
def test_a_pool_child_killed_right_after_sending_a_row_leaves_it(start_worker, tmp_path):
    """The child is SIGKILLed by a task_postrun receiver that runs after the audit hook: its
    row was sent, its answer never read. The result was stored before, so Celery acknowledges
    the task ("succeeded before the worker was lost"): its row must be there. PostgreSQL runs
    a statement whose client has gone."""
    worker = start_worker("w1", "--concurrency=1")
    marker = tmp_path / "killed"
    task_id = tasks.die_after_postrun.delay(str(marker)).id

    worker.wait_for_output("succeeded before the worker was lost", timeout=60)
    [row] = wait_for(lambda: list(TaskExecution.objects.filter(task_id=task_id)), timeout=10)

    assert marker.read_text() == task_id
    assert (row.status, row.result) == (Status.SUCCEEDED, "done")


def test_a_row_stuck_behind_a_lock_past_the_timeout_is_written_once(
    writer, fallen_back, monkeypatch
):
    """The writer gives up waiting, but its backend would still insert the row once the lock
    goes: it is ended first, so the fallback's write is the only one."""
    writer.write(a_row())
    writer._answer(block=True)
    monkeypatch.setattr(audit_writer, "ANSWER_TIMEOUT", 1.0)
    blocker = psycopg.connect(**connection.get_connection_params(), autocommit=False)
    blocker.execute("LOCK TABLE monitoring_taskexecution IN SHARE MODE")
    threading.Timer(5.0, blocker.commit).start()
    stuck, after = a_row(), a_row()

    writer.write(stuck)
    writer.write(after)  # gives up on `stuck` after 1 s, ends its backend, falls back
    writer.close()
    blocker.close()

    assert [r["task_id"] for r in fallen_back[0]][:1] == [stuck["task_id"]]
    assert len(rows_of(stuck["task_id"])) == 1
    assert len(rows_of(after["task_id"])) == 1


def readable(sock: int) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def test_a_connection_that_died_idle_is_not_trusted_with_the_next_row(
    writer, fallen_back, monkeypatch
):
    writer.write(a_row())
    writer._answer(block=True)
    terminate(writer_backend_pid(writer))
    # The backend leaves pg_stat_activity a moment before its goodbye reaches the socket.
    wait_for(lambda: readable(writer._wrapper.connection.pgconn.socket), timeout=10)
    monkeypatch.setattr(audit_writer, "IDLE_CHECK_AFTER", 0.0)
    row = a_row()

    assert writer.write(row) is True
    # Written before write() returned, through the fallback: not sent into a dead socket.
    assert [r["task_id"] for r in fallen_back[0]] == [row["task_id"]]
    assert len(rows_of(row["task_id"])) == 1


def test_closing_reads_the_last_answer_so_a_row_refused_at_exit_is_not_dropped(
    writer, fallen_back, broker
):
    refused = a_row(attempt=-1)
    writer.write(refused)

    writer.close()

    assert [r["task_id"] for r in fallen_back[0]] == [refused["task_id"]]


def test_worker_processes_close_their_writer_when_they_exit():
    from celery import signals as celery_signals

    for signal in (celery_signals.worker_process_shutdown, celery_signals.worker_shutdown):
        assert close_writer in [ref() for _, ref in signal.receivers]
