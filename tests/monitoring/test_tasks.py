from datetime import UTC, datetime, timedelta

import pytest

from monitoring.metrics import ROLLUP_LAG, fold_executions
from monitoring.models import ExecutionRollup, ExecutionTotal, Status, TaskExecution
from monitoring.tasks import purge_executions, reap_lost, rollup_executions

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def execution(task_id: str, status: str, started_at: datetime) -> TaskExecution:
    return TaskExecution.objects.create(
        task_id=task_id, task_name="tests.sleep", status=status, started_at=started_at
    )


def test_reaper_marks_rows_started_past_the_hard_time_limit_as_lost(settings, broker):
    settings.CELERY_TASK_TIME_LIMIT = 300
    dead = execution("dead", Status.STARTED, NOW - timedelta(minutes=7))
    running = execution("running", Status.STARTED, NOW - timedelta(minutes=5))
    done = execution("done", Status.SUCCEEDED, NOW - timedelta(hours=1))

    assert reap_lost(NOW.isoformat()) == {"lost": 1, "replayed": 0}

    dead.refresh_from_db()
    assert (dead.status, dead.error_type) == (Status.LOST, "WorkerLost")
    assert dead.finished_at == NOW
    running.refresh_from_db()
    done.refresh_from_db()
    assert (running.status, done.status) == (Status.STARTED, Status.SUCCEEDED)


def test_purge_deletes_only_rows_older_than_the_retention_in_batches():
    now = datetime.now(UTC)
    for i in range(7):
        execution(f"old{i}", Status.SUCCEEDED, now - timedelta(days=31))
    kept = execution("recent", Status.SUCCEEDED, now - timedelta(days=29))

    assert purge_executions(days=30, batch=3) == {"deleted": 7}

    assert list(TaskExecution.objects.all()) == [kept]


def finished(task_id: str, at: datetime, seconds: float = 1.0) -> TaskExecution:
    return TaskExecution.objects.create(
        task_id=task_id,
        task_name="tests.sleep",
        status=Status.SUCCEEDED,
        started_at=at - timedelta(seconds=seconds),
        finished_at=at,
        duration=timedelta(seconds=seconds),
    )


def totals() -> dict[tuple[str, str, str], int]:
    return {(t.task_name, t.status, t.le): t.count for t in ExecutionTotal.objects.all()}


def test_rollup_folds_the_rows_that_finished_up_to_its_lag_ago():
    finished("old", NOW - ROLLUP_LAG - timedelta(seconds=1))
    finished("edge", NOW - ROLLUP_LAG)
    finished("recent", NOW - ROLLUP_LAG + timedelta(seconds=1))
    TaskExecution.objects.create(
        task_id="running", task_name="tests.sleep", started_at=NOW - timedelta(hours=1)
    )

    assert rollup_executions(NOW.isoformat()) == {"folded": 2}

    assert totals() == {("tests.sleep", "succeeded", "1.0"): 2}
    assert ExecutionRollup.objects.get().folded_until == NOW - ROLLUP_LAG


def test_rollup_twice_folds_nothing_twice():
    finished("a", NOW - timedelta(hours=1), seconds=0.2)
    rollup_executions(NOW.isoformat())

    assert rollup_executions(NOW.isoformat()) == {"folded": 0}
    # A run that read an earlier clock (it queued behind the first) folds nothing either.
    assert fold_executions(NOW - timedelta(minutes=1)) == 0
    assert ExecutionRollup.objects.get().folded_until == NOW - ROLLUP_LAG  # not moved back
    assert rollup_executions((NOW + timedelta(minutes=1)).isoformat()) == {"folded": 0}

    assert totals() == {("tests.sleep", "succeeded", "0.25"): 1}
    assert ExecutionTotal.objects.get().duration_sum == timedelta(seconds=0.2)


def test_rollup_adds_to_the_totals_it_already_holds():
    finished("a", NOW - timedelta(hours=1))
    rollup_executions(NOW.isoformat())
    finished("b", NOW - timedelta(minutes=5))

    assert rollup_executions((NOW + timedelta(minutes=10)).isoformat()) == {"folded": 1}

    assert totals() == {("tests.sleep", "succeeded", "1.0"): 2}
    assert ExecutionTotal.objects.get().duration_sum == timedelta(seconds=2)


def test_a_row_written_after_its_time_was_folded_is_never_counted():
    """The documented edge (metrics.py): a spooled row replayed later than ROLLUP_LAG."""
    rollup_executions(NOW.isoformat())
    finished("late", NOW - timedelta(hours=1))

    assert rollup_executions((NOW + timedelta(minutes=1)).isoformat()) == {"folded": 0}
    assert totals() == {}
