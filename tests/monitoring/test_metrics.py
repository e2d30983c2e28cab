from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
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
