import socket
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from celery import current_app
from django.conf import settings
from django_celery_beat.models import PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from monitoring.beat import sync_jobs
from monitoring.models import Status, TaskExecution

pytestmark = pytest.mark.django_db


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_executions_by_task_and_status(client):
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    for i, status in enumerate([Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED]):
        TaskExecution.objects.create(
            task_id=f"t{i}", task_name="pipeline.fetch_source", status=status, started_at=start
        )

    samples = scrape(client)

    key = "newsbeat_task_executions_total"
    ok = (("status", "succeeded"), ("task", "pipeline.fetch_source"))
    failed = (("status", "failed"), ("task", "pipeline.fetch_source"))
    assert samples[(key, ok)] == 2
    assert samples[(key, failed)] == 1


def test_metrics_give_each_job_its_last_success_and_status(client):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    started = datetime.now(UTC) - timedelta(minutes=3)
    TaskExecution.objects.create(
        task_id="x",
        task_name="pipeline.poll_news",
        periodic_task_name="poll-news",
        status=Status.SUCCEEDED,
        started_at=started,
    )

    samples = scrape(client)

    last = samples[("newsbeat_job_last_success_timestamp_seconds", (("job", "poll-news"),))]
    assert last == pytest.approx(started.timestamp())
    assert samples[("newsbeat_job_status", (("job", "poll-news"), ("status", "up")))] == 1
    assert samples[("newsbeat_job_status", (("job", "poll-stories"), ("status", "new")))] == 1


def execution(task: str, status: str, seconds: float | None, **fields) -> TaskExecution:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return TaskExecution.objects.create(
        task_id=f"{task}-{status}-{seconds}",
        task_name=task,
        status=status,
        started_at=start,
        duration=timedelta(seconds=seconds) if seconds is not None else None,
        **fields,
    )


def test_duration_histogram_counts_the_runs_of_each_task_into_buckets(client):
    for seconds in (0.05, 0.5, 2.0, 400.0):  # 0.5: a bucket bound counts in its bucket
        execution("pipeline.fetch_source", Status.SUCCEEDED, seconds)
    execution("pipeline.fetch_source", Status.FAILED, 0.2)
    execution("pipeline.fetch_source", Status.STARTED, None)  # still running: no duration

    samples = scrape(client)

    def bucket(le: str) -> float:
        labels = (("le", le), ("task", "pipeline.fetch_source"))
        return samples[("newsbeat_task_duration_seconds_bucket", labels)]

    assert bucket("0.1") == 1
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("2.5") == 4
    assert bucket("300.0") == 4
    assert bucket("+Inf") == 5
    task = (("task", "pipeline.fetch_source"),)
    assert samples[("newsbeat_task_duration_seconds_count", task)] == 5
    assert samples[("newsbeat_task_duration_seconds_sum", task)] == pytest.approx(402.75)


def test_metrics_give_each_job_how_long_it_is_overdue(client):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    TaskExecution.objects.create(
        task_id="x",
        task_name="pipeline.poll_news",
        periodic_task_name="poll-news",
        status=Status.SUCCEEDED,
        started_at=now - timedelta(minutes=20),  # due 5 minutes ago
    )
    PeriodicTask.objects.filter(name="poll-stories").update(enabled=False)

    with time_machine.travel(now, tick=False):
        samples = scrape(client)

    assert samples[("newsbeat_job_overdue_seconds", (("job", "poll-news"),))] == 300
    assert samples[("newsbeat_job_status", (("job", "poll-news"), ("status", "late")))] == 1
    assert samples[("newsbeat_job_overdue_seconds", (("job", "poll-stories"),))] == 0
    assert samples[("newsbeat_job_status", (("job", "poll-stories"), ("status", "paused")))] == 1


def test_metrics_give_the_length_of_each_queue(client, broker, settings):
    settings.NEWSBEAT_METRICS_QUEUES = ["celery", "fetch"]
    broker.rpush("celery", "m1", "m2", "m3")
    broker.rpush("celery\x06\x166", "prioritised")

    samples = scrape(client)

    assert samples[("newsbeat_queue_length", (("queue", "celery"),))] == 4
    assert samples[("newsbeat_queue_length", (("queue", "fetch"),))] == 0


def test_metrics_leave_out_queue_lengths_when_redis_does_not_answer(client):
    execution("pipeline.fetch_source", Status.SUCCEEDED, 1.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    old = current_app.conf.broker_url
    current_app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
    try:
        samples = scrape(client)
    finally:
        current_app.conf.broker_url = old

    assert not any(name == "newsbeat_queue_length" for name, _ in samples)
    ok = (("status", "succeeded"), ("task", "pipeline.fetch_source"))
    assert samples[("newsbeat_task_executions_total", ok)] == 1
