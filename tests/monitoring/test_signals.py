"""The audit hooks, in a real `celery worker` process fed through real Redis."""

import pytest

from monitoring.models import Status, TaskExecution
from tests import tasks
from tests.processes import wait_for

pytestmark = pytest.mark.integration


def finished_rows(task_id: str, count: int = 1) -> list[TaskExecution]:
    def done():
        rows = list(TaskExecution.objects.filter(task_id=task_id).order_by("attempt", "id"))
        finished = [r for r in rows if r.status != Status.STARTED]
        return rows if len(finished) >= count else None

    return wait_for(done, timeout=30)


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


def test_failed_task_records_error_type_message_and_traceback(worker):
    task_id = tasks.boom.delay("feed http://x returned 500").id

    [row] = finished_rows(task_id)

    assert row.status == Status.FAILED
    assert row.error_type == "ValueError"
    assert row.error_message == "feed http://x returned 500"
    assert "Traceback" in row.traceback
    assert "raise ValueError(message)" in row.traceback
    assert row.result is None


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


def test_running_task_shows_as_started(worker):
    task_id = tasks.sleep.delay(3).id

    row = wait_for(lambda: TaskExecution.objects.filter(task_id=task_id).first(), timeout=30)
    assert row.status == Status.STARTED
    assert row.finished_at is None

    [row] = finished_rows(task_id)
    assert row.status == Status.SUCCEEDED


def test_periodic_job_name_comes_from_beat_header(worker):
    task_id = tasks.add.apply_async((1, 1), headers={"periodic_task_name": "poll-news"}).id

    [row] = finished_rows(task_id)

    assert row.periodic_task_name == "poll-news"


def test_worker_reuses_its_database_connection_across_tasks(worker):
    # Celery's Django fixup closes connections around every task unless CELERY_DB_REUSE_MAX is
    # set; reconnecting per task made the audit hook 8x slower.
    first = tasks.backend_pid.delay().id
    finished_rows(first)
    second = tasks.backend_pid.delay().id
    finished_rows(second)

    pids = [TaskExecution.objects.get(task_id=t).result for t in (first, second)]
    assert pids[0] == pids[1]
