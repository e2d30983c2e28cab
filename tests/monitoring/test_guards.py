"""Scheduling guards under faults, with real worker processes, Redis and PostgreSQL."""

import os
import signal

import pytest

from monitoring.models import Status, TaskExecution
from tests import tasks
from tests.invariants import assert_invariants
from tests.processes import wait_for

pytestmark = pytest.mark.integration


def rows(task_id: str) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(task_id=task_id).order_by("id"))


def finished(task_id: str, status: str, timeout: float = 60) -> list[TaskExecution]:
    return wait_for(
        lambda: any(r.status == status for r in rows(task_id)) and rows(task_id), timeout
    )


def test_periodic_run_is_skipped_while_its_previous_run_is_still_running(start_worker):
    start_worker("w1", "--concurrency=2")
    job = {"periodic_task_name": "slow-job"}
    first = tasks.sleep.apply_async((3,), headers=job).id
    wait_for(lambda: rows(first) and rows(first)[0].status == Status.STARTED, timeout=30)

    second = tasks.sleep.apply_async((0,), headers=job).id
    [skipped] = finished(second, Status.SKIPPED)
    [done] = finished(first, Status.SUCCEEDED)

    assert skipped.error_type == "Overlap"
    assert f"previous run of slow-job ({first}) is still running" in skipped.error_message
    assert skipped.started_at < done.finished_at
    # The lock went with the first run: the next run goes ahead.
    third = tasks.sleep.apply_async((0,), headers=job).id
    assert finished(third, Status.SUCCEEDED)[0].attempt == 1


def test_tasks_outside_any_job_may_overlap(start_worker):
    start_worker("w1", "--concurrency=2")
    first = tasks.sleep.delay(2).id
    second = tasks.sleep.delay(0).id

    finished(first, Status.SUCCEEDED)
    finished(second, Status.SUCCEEDED)


def test_second_delivery_of_the_same_slot_is_recorded_not_run(worker):
    slot = {"periodic_task_name": "fast-job", "periodic_slot": "2026-11-23T12:00:00+00:00"}
    first = tasks.add.apply_async((1, 2), headers=slot).id
    finished(first, Status.SUCCEEDED)

    again = tasks.add.apply_async((1, 2), headers=slot).id
    [row] = finished(again, Status.SKIPPED)

    assert row.error_type == "DuplicateSlot"
    assert first in row.error_message
    assert row.result is None


def test_killed_worker_child_task_runs_again_and_first_attempt_is_lost(worker, broker, tmp_path):
    task_id = tasks.die_once.delay(str(tmp_path / "died")).id

    attempts = finished(task_id, Status.SUCCEEDED)

    assert [r.status for r in attempts] == [Status.LOST, Status.SUCCEEDED]
    assert attempts[0].error_type == "WorkerLost"
    assert attempts[1].result == "survived"
    assert_invariants({task_id}, broker)


def test_task_of_a_killed_worker_runs_again_on_another_and_first_attempt_is_lost(
    start_worker, broker
):
    # Redis hands an unacknowledged message to another consumer once the visibility timeout
    # has passed since delivery; production uses an hour, the test a few seconds.
    fast = {"NEWSBEAT_VISIBILITY_TIMEOUT": "3", "NEWSBEAT_UNACKED_RESTORE_INTERVAL": "1"}
    doomed = start_worker("w1", "--concurrency=1", **fast)
    task_id = tasks.sleep.delay(2).id
    wait_for(lambda: rows(task_id) and rows(task_id)[0].status == Status.STARTED, timeout=30)

    os.killpg(doomed.popen.pid, signal.SIGKILL)  # the whole worker, children and all
    start_worker("w2", "--concurrency=1", **fast)

    attempts = finished(task_id, Status.SUCCEEDED, timeout=90)
    assert [r.status for r in attempts] == [Status.LOST, Status.SUCCEEDED]
    assert attempts[0].worker.startswith("w1@")
    assert attempts[1].worker.startswith("w2@")
    assert_invariants({task_id}, broker)


def test_task_that_always_kills_its_worker_is_stopped_as_poison(start_worker, broker):
    start_worker("w1", "--concurrency=1", NEWSBEAT_MAX_DELIVERIES="3")
    task_id = tasks.die_always.delay().id

    attempts = finished(task_id, Status.FAILED, timeout=90)

    assert [r.status for r in attempts] == [Status.LOST] * 3 + [Status.FAILED]
    assert attempts[-1].error_type == "PoisonTaskError"
    assert "delivered 4 times" in attempts[-1].error_message
    wait_for(lambda: broker.llen("celery") == 0 and not broker.hlen("unacked"), timeout=10)
    assert_invariants({task_id}, broker)


def test_hung_task_is_killed_at_its_hard_time_limit_and_its_row_says_so(worker):
    task_id = tasks.hang.apply_async((60,), soft_time_limit=1, time_limit=2).id

    [row] = finished(task_id, Status.FAILED, timeout=30)

    assert row.error_type == "TimeLimitExceeded"
    assert row.duration.total_seconds() >= 2
    # The worker replaced the killed child and goes on working.
    assert finished(tasks.add.delay(1, 1).id, Status.SUCCEEDED)


def test_soft_time_limit_fails_the_task_with_its_own_error(worker):
    task_id = tasks.sleep.apply_async((30,), soft_time_limit=1, time_limit=5).id

    [row] = finished(task_id, Status.FAILED, timeout=30)

    assert row.error_type == "SoftTimeLimitExceeded"


def test_warm_shutdown_finishes_running_tasks_and_leaves_queued_ones(start_worker, broker):
    worker = start_worker("w1", "--concurrency=1")
    running_id = tasks.sleep.delay(3).id
    wait_for(lambda: rows(running_id) and rows(running_id)[0].status == Status.STARTED, 30)
    queued_id = tasks.add.delay(2, 2).id

    assert worker.stop(timeout=30) == 0  # SIGTERM: warm shutdown

    [row] = rows(running_id)
    assert row.status == Status.SUCCEEDED
    assert rows(queued_id) == []
    [raw] = broker.lrange("celery", 0, -1)
    assert queued_id in raw.decode()
