from datetime import UTC, datetime, timedelta

import pytest

from monitoring.models import Status, TaskExecution
from monitoring.tasks import purge_executions, reap_lost

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
