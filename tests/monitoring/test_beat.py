"""A real `celery beat` process with the database scheduler, observed through the Redis queue."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.beat import sync_jobs
from tests.processes import CELERY, process_env, running, wait_for

pytestmark = pytest.mark.integration


def queued(broker) -> list[tuple[str, str]]:
    """(task name, periodic job name) of every message waiting in the default queue."""
    out = []
    for raw in broker.lrange("celery", 0, -1):
        headers = json.loads(raw)["headers"]
        out.append((headers["task"], headers.get("periodic_task_name")))
    return out


def every_second(name: str, task: str) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=name, task=task, interval=interval, start_time=timezone.now() - timedelta(hours=1)
    )


def test_sync_creates_missing_jobs_and_keeps_edited_ones(db):
    assert sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS) == {
        "poll-news": "created",
        "poll-stories": "created",
    }
    job = PeriodicTask.objects.get(name="poll-news")
    assert job.interval.every == 15 * 60
    assert job.expire_seconds == 15 * 60
    job.enabled = False
    job.save()

    assert sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)["poll-news"] == "kept"
    assert not PeriodicTask.objects.get(name="poll-news").enabled

    assert sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS, reset=True)["poll-news"] == "reset"
    assert PeriodicTask.objects.get(name="poll-news").enabled


def test_beat_creates_declared_jobs_and_runs_them_at_once(transactional_db, broker, tmp_path):
    args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]
    with running(args, tmp_path / "beat.log", process_env()):
        sent = wait_for(lambda: len(set(queued(broker))) >= 2 and set(queued(broker)), timeout=30)

    assert sent == {
        ("pipeline.poll_news", "poll-news"),
        ("pipeline.poll_stories", "poll-stories"),
    }
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
