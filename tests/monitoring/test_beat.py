"""A real `celery beat` process with the database scheduler, observed through the Redis queue."""

import json
import signal
import time
from datetime import datetime, timedelta
from itertools import pairwise

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.beat import sync_jobs
from monitoring.models import Status, TaskExecution
from tests.processes import CELERY, process_env, running, wait_for

pytestmark = pytest.mark.integration


def queued(broker) -> list[tuple[str, str]]:
    """(task name, periodic job name) of every message waiting in the default queue."""
    out = []
    for raw in broker.lrange("celery", 0, -1):
        headers = json.loads(raw)["headers"]
        out.append((headers["task"], headers.get("periodic_task_name")))
    return out


def queued_for(job: str, broker) -> list[dict]:
    """Headers of the messages waiting in the default queue for one periodic job."""
    headers = [json.loads(raw)["headers"] for raw in broker.lrange("celery", 0, -1)]
    return [h for h in headers if h.get("periodic_task_name") == job]


def every_second(name: str, task: str) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=name, task=task, interval=interval, start_time=timezone.now() - timedelta(hours=1)
    )


def test_sync_creates_missing_jobs_and_keeps_edited_ones(db):
    outcome = sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    assert outcome == dict.fromkeys(settings.NEWSBEAT_PERIODIC_JOBS, "created")
    assert {"poll-news", "poll-stories"} <= set(outcome)
    job = PeriodicTask.objects.get(name="poll-news")
    assert job.interval.every == 15 * 60
    assert job.expire_seconds == 15 * 60
    job.enabled = False
    job.save()

    assert sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)["poll-news"] == "kept"
    assert not PeriodicTask.objects.get(name="poll-news").enabled

    assert sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS, reset=True)["poll-news"] == "reset"
    assert PeriodicTask.objects.get(name="poll-news").enabled


def test_beat_creates_declared_jobs_and_runs_interval_jobs_at_once(
    transactional_db, broker, tmp_path
):
    args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]
    with running(args, tmp_path / "beat.log", process_env()):
        # Interval jobs are due at once; a daily crontab job waits for its time.
        expected = {
            (job["task"], name)
            for name, job in settings.NEWSBEAT_PERIODIC_JOBS.items()
            if "every" in job
        }
        sent = wait_for(lambda: set(queued(broker)) >= expected and set(queued(broker)), 30)

    assert ("pipeline.poll_news", "poll-news") in sent
    assert ("pipeline.poll_stories", "poll-stories") in sent
    assert set(PeriodicTask.objects.values_list("name", flat=True)) >= {
        "poll-news",
        "poll-stories",
    }


def test_beat_dispatches_from_the_database_and_pausing_stops_dispatch(
    transactional_db, broker, tmp_path
):
    news = every_second("poll-news", "pipeline.poll_news")
    every_second("poll-stories", "pipeline.poll_stories")
    args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]
    with running(args, tmp_path / "beat.log", process_env()):
        wait_for(lambda: {t for t, _ in queued(broker)} >= {"pipeline.poll_news"}, timeout=30)

        news.enabled = False
        news.save()  # django-celery-beat's signal bumps the change marker beat watches

        def three_dispatches_without_news() -> bool:
            tasks = [t for t, _ in queued(broker)]
            if "pipeline.poll_news" in tasks:  # sent before beat saw the change: start over
                broker.delete("celery")
                return False
            return len(tasks) >= 3

        wait_for(three_dispatches_without_news, timeout=30)


def test_one_of_two_beats_dispatches_and_the_standby_takes_over_when_it_dies(
    transactional_db, broker, tmp_path
):
    every_second("tick-job", "tests.add")
    renewal = 2
    env = process_env(NEWSBEAT_BEAT_LOCK_SECONDS=str(renewal))
    args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]

    def slots() -> list[str]:
        return [
            json.loads(raw)["headers"]["periodic_slot"]
            for raw in broker.lrange("celery", 0, -1)
            if json.loads(raw)["headers"].get("periodic_task_name") == "tick-job"
        ]

    with (
        running(args, tmp_path / "a.log", env) as a,
        running(args, tmp_path / "b.log", env) as b,
    ):
        wait_for(lambda: "event=beat_active" in a.output() + b.output(), timeout=30)
        active, standby = (a, b) if "event=beat_active" in a.output() else (b, a)
        standby.wait_for_output("event=beat_standby", timeout=15)
        wait_for(lambda: len(slots()) >= 3, timeout=30)
        assert "event=beat_active" not in standby.output()

        active.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        before = slots()  # newest first (LPUSH)
        standby.wait_for_output("event=beat_active", timeout=4 * renewal)
        took_over_after = time.monotonic() - killed_at
        wait_for(lambda: len(slots()) >= len(before) + 3, timeout=30)
        sent = slots()

    assert took_over_after <= 2 * renewal + 0.5
    # A beat records each dispatch in the database right after publishing it. Killed between
    # the two, its last slot is sent again by the standby: only that slot, at most once more.
    # Workers recognise the copy by its slot header and record it skipped (DuplicateSlot, see
    # test_guards.py); recording before publishing would lose the slot instead.
    repeated = {s for s in sent if sent.count(s) > 1}
    assert repeated <= {before[0]}
    assert all(sent.count(s) <= 2 for s in repeated)
    # The first slot of a new job is named for a date far in the past (django-celery-beat's way
    # of running it at once), so the chain starts at the second.
    times = sorted({datetime.fromisoformat(s) for s in sent})[1:]
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(times)]
    # Each slot follows the previous one; across the hand-over the gap is at most the time
    # the standby needed, never a whole missed run.
    assert max(gaps) <= 1 + 2 * renewal + 1


def test_runs_that_waited_past_their_slot_expire_instead_of_piling_up(
    start_worker, broker, tmp_path
):
    job = every_second("tick-job", "tests.add")
    job.args = "[1, 1]"
    job.expire_seconds = 1
    job.save()
    args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]
    # An outage: beat dispatches, no worker consumes.
    with running(args, tmp_path / "beat.log", process_env()):
        wait_for(lambda: len(queued_for("tick-job", broker)) >= 3, timeout=30)
    missed = queued_for("tick-job", broker)
    latest_expiry = max(datetime.fromisoformat(h["expires"]) for h in missed)
    wait_for(lambda: timezone.now() > latest_expiry, timeout=10)

    start_worker("w1", "--concurrency=1")

    runs = TaskExecution.objects.filter(periodic_task_name="tick-job")
    expired = wait_for(
        lambda: (
            runs.filter(status=Status.EXPIRED).count() == len(missed)
            and runs.filter(status=Status.EXPIRED)
        ),
        timeout=30,
    )
    assert {row.task_id for row in expired} == {h["id"] for h in missed}
    assert {row.task_name for row in expired} == {"tests.add"}
    assert not runs.exclude(status=Status.EXPIRED).exists()
