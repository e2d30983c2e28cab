"""The audit hooks: in a real `celery worker` process fed through real Redis, and called in
this process where a test needs to see what each hook writes."""

import uuid

import pytest
from django.db import connection

from monitoring import signals
from monitoring.models import Status, TaskExecution
from tests import tasks
from tests.processes import wait_for


def finished_rows(task_id: str, count: int = 1) -> list[TaskExecution]:
    def done():
        rows = list(TaskExecution.objects.filter(task_id=task_id).order_by("attempt", "id"))
        finished = [r for r in rows if r.status != Status.STARTED]
        return rows if len(finished) >= count else None

    return wait_for(done, timeout=30)


@pytest.mark.integration
def test_succeeded_task_leaves_a_complete_row(worker):
    task_id = tasks.add.delay(2, 3).id

    [row] = finished_rows(task_id)

    assert row.status == Status.SUCCEEDED
    assert row.task_name == "tests.add"
    assert row.result == 5
    assert row.worker.startswith("w1@")
    assert row.queue == "celery"
    assert row.args == "[2, 3]"
    assert row.attempt == 1
    assert row.finished_at >= row.started_at
    assert row.duration is not None
    assert row.duration.total_seconds() >= 0


@pytest.mark.integration
def test_failed_task_records_error_type_message_and_traceback(worker):
    task_id = tasks.boom.delay("feed http://x returned 500").id

    [row] = finished_rows(task_id)

    assert row.status == Status.FAILED
    assert row.error_type == "ValueError"
    assert row.error_message == "feed http://x returned 500"
    assert "Traceback" in row.traceback
    assert "raise ValueError(message)" in row.traceback
    assert row.result is None


@pytest.mark.integration
def test_retried_task_shows_each_attempt(worker):
    task_id = tasks.flaky.delay(2).id

    rows = finished_rows(task_id, count=3)

    assert [(r.attempt, r.status) for r in rows] == [
        (1, Status.RETRYING),
        (2, Status.RETRYING),
        (3, Status.SUCCEEDED),
    ]
    assert rows[0].error_type == "ConnectionError"
    assert rows[0].error_message == "attempt 1 failed"
    assert rows[2].result == "succeeded on attempt 3"


@pytest.mark.integration
def test_task_running_past_a_second_shows_as_started(worker):
    # A short task is written once, when it ends; one still running after a second gets its
    # `started` row then.
    task_id = tasks.sleep.delay(3).id

    row = wait_for(lambda: TaskExecution.objects.filter(task_id=task_id).first(), timeout=30)
    assert row.status == Status.STARTED
    assert row.finished_at is None

    [row] = finished_rows(task_id)
    assert row.status == Status.SUCCEEDED


@pytest.mark.integration
def test_periodic_job_name_comes_from_beat_header(worker):
    task_id = tasks.add.apply_async((1, 1), headers={"periodic_task_name": "poll-news"}).id

    [row] = finished_rows(task_id)

    assert row.periodic_task_name == "poll-news"


@pytest.mark.integration
def test_worker_reuses_its_database_connection_across_tasks(worker):
    # Celery's Django fixup closes connections around every task unless CELERY_DB_REUSE_MAX is
    # set; reconnecting per task made the audit hook 8x slower.
    first = tasks.backend_pid.delay().id
    finished_rows(first)
    second = tasks.backend_pid.delay().id
    finished_rows(second)

    pids = [TaskExecution.objects.get(task_id=t).result for t in (first, second)]
    assert pids[0] == pids[1]


def run_hooks(task_id: str, *, redelivered: bool = False, end: bool = True) -> None:
    """What the worker's trace does around a task: prerun, (the task), postrun."""
    request = {
        "id": task_id,
        "args": [2, 3],
        "kwargs": {},
        "retries": 0,
        "hostname": "w1@test",
        "delivery_info": {"routing_key": "celery", "redelivered": redelivered},
        "is_eager": False,
    }
    tasks.add.push_request(**request)
    try:
        signals.on_task_prerun(sender=tasks.add, task_id=task_id, task=tasks.add)
        if end:
            signals.on_task_postrun(
                sender=tasks.add, task_id=task_id, task=tasks.add, retval=5, state="SUCCESS"
            )
    finally:
        tasks.add.pop_request()


@pytest.fixture
def no_started_rows(monkeypatch):
    """Keep the started-row thread, whose connection is outside the test's transaction, away."""
    monkeypatch.setattr(signals, "STARTED_ROW_AFTER", 3600.0)


@pytest.mark.django_db
def test_short_task_has_no_row_until_it_ends_then_one_finished_row(no_started_rows):
    task_id = str(uuid.uuid4())

    run_hooks(task_id, end=False)
    assert not TaskExecution.objects.filter(task_id=task_id).exists()

    signals.on_task_postrun(
        sender=tasks.add, task_id=task_id, task=tasks.add, retval=5, state="SUCCESS"
    )
    [row] = TaskExecution.objects.filter(task_id=task_id)
    assert (row.status, row.result, row.args, row.worker) == (
        Status.SUCCEEDED,
        5,
        "[2, 3]",
        "w1@test",
    )
    assert row.finished_at >= row.started_at


@pytest.mark.django_db(transaction=True)
def test_started_row_of_a_long_task_is_finished_by_its_final_write(monkeypatch):
    monkeypatch.setattr(signals, "STARTED_ROW_AFTER", 0.0)
    task_id = str(uuid.uuid4())

    run_hooks(task_id, end=False)
    started = wait_for(lambda: TaskExecution.objects.filter(task_id=task_id).first(), 10)
    assert (started.status, started.finished_at) == (Status.STARTED, None)

    signals.on_task_postrun(
        sender=tasks.add, task_id=task_id, task=tasks.add, retval=5, state="SUCCESS"
    )
    [row] = TaskExecution.objects.filter(task_id=task_id)
    assert (row.pk, row.status, row.result) == (started.pk, Status.SUCCEEDED, 5)


@pytest.mark.django_db
def test_redelivery_of_a_task_that_died_before_its_started_row_writes_the_lost_row(
    no_started_rows,
):
    # The first delivery's worker died within a second: it left no row to mark lost.
    task_id = str(uuid.uuid4())

    run_hooks(task_id, redelivered=True)

    rows = list(TaskExecution.objects.filter(task_id=task_id).order_by("id"))
    assert [(r.status, r.error_type) for r in rows] == [
        (Status.LOST, "WorkerLost"),
        (Status.SUCCEEDED, ""),
    ]


@pytest.mark.django_db(transaction=True)
def test_final_write_skips_the_wait_for_the_disk_for_its_own_statement_only():
    run_hooks(str(uuid.uuid4()))

    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
