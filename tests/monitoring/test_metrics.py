import socket
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from celery import current_app
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from monitoring.beat import sync_jobs
from monitoring.metrics import ROLLUP_LAG
from monitoring.models import ExecutionTotal, Status, TaskExecution
from monitoring.tasks import purge_executions, rollup_executions

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
            task_id=f"t{i}",
            task_name="pipeline.fetch_source",
            status=status,
            started_at=start,
            finished_at=start,
        )
    TaskExecution.objects.create(  # still running: counted once it finishes
        task_id="t3", task_name="pipeline.fetch_source", status=Status.STARTED, started_at=start
    )

    samples = scrape(client)

    key = "newsbeat_task_executions_total"
    ok = (("status", "succeeded"), ("task", "pipeline.fetch_source"))
    failed = (("status", "failed"), ("task", "pipeline.fetch_source"))
    assert samples[(key, ok)] == 2
    assert samples[(key, failed)] == 1
    assert (key, (("status", "started"), ("task", "pipeline.fetch_source"))) not in samples


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


def execution(
    task: str,
    status: str,
    seconds: float | None,
    start: datetime = datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    **fields,
) -> TaskExecution:
    """A row; finished `seconds` after `start` unless its status is `started`."""
    finished = status != Status.STARTED
    return TaskExecution.objects.create(
        task_id=f"{task}-{status}-{seconds}-{start.timestamp()}",
        task_name=task,
        status=status,
        started_at=start,
        finished_at=start + timedelta(seconds=seconds or 0) if finished else None,
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


FETCH = "pipeline.fetch_source"
OK = ("newsbeat_task_executions_total", (("status", "succeeded"), ("task", FETCH)))
FAILED = ("newsbeat_task_executions_total", (("status", "failed"), ("task", FETCH)))
COUNT = ("newsbeat_task_duration_seconds_count", (("task", FETCH),))
SUM = ("newsbeat_task_duration_seconds_sum", (("task", FETCH),))
LE_1 = ("newsbeat_task_duration_seconds_bucket", (("le", "1.0"), ("task", FETCH)))


def execution_samples(samples: dict) -> dict:
    return {key: value for key, value in samples.items() if key[0].startswith("newsbeat_task_")}


def test_metrics_match_the_rows_before_and_after_a_rollup(client):
    now = datetime.now(UTC)
    execution(FETCH, Status.SUCCEEDED, 0.5, start=now - timedelta(hours=2))  # folded
    execution(FETCH, Status.FAILED, 3.0, start=now - timedelta(hours=1))  # folded
    execution(FETCH, Status.SUCCEEDED, 2.0, start=now - timedelta(minutes=2))  # too recent
    before = scrape(client)

    assert rollup_executions() == {"folded": 2}
    after = scrape(client)

    assert ExecutionTotal.objects.exists()
    assert execution_samples(after) == execution_samples(before)
    assert (after[OK], after[FAILED], after[COUNT], after[LE_1]) == (2, 1, 3, 1)
    assert after[SUM] == pytest.approx(5.5)


def test_counters_do_not_go_down_when_retention_purges_old_rows(client):
    now = datetime.now(UTC)
    execution(FETCH, Status.SUCCEEDED, 0.5, start=now - timedelta(days=40))
    execution(FETCH, Status.SUCCEEDED, 1.5, start=now - timedelta(days=1))
    rollup_executions()
    before = scrape(client)

    assert purge_executions(days=30) == {"deleted": 1}
    after = scrape(client)

    assert execution_samples(after) == execution_samples(before)
    assert (after[OK], after[COUNT], after[LE_1]) == (2, 2, 1)


def test_a_row_finishing_after_a_rollup_is_counted_once(client):
    now = datetime.now(UTC)
    running = execution(FETCH, Status.STARTED, None, start=now - timedelta(hours=1))
    rollup_executions()
    assert OK not in scrape(client)

    TaskExecution.objects.filter(pk=running.pk).update(
        status=Status.SUCCEEDED, finished_at=now, duration=timedelta(hours=1)
    )
    assert scrape(client)[OK] == 1
    later = now + ROLLUP_LAG + timedelta(minutes=1)
    assert rollup_executions(later.isoformat()) == {"folded": 1}
    with time_machine.travel(later + timedelta(seconds=1), tick=False):
        samples = scrape(client)

    assert (samples[OK], samples[COUNT], samples[SUM]) == (1, 1, 3600)


def test_scrape_reads_only_the_rows_that_finished_after_the_rollup(client):
    now = datetime.now(UTC)
    execution(FETCH, Status.SUCCEEDED, 0.5, start=now - timedelta(hours=1))
    rollup_executions()

    with CaptureQueriesContext(connection) as queries:
        scrape(client)

    reads = [q["sql"] for q in queries.captured_queries if '"monitoring_taskexecution"' in q["sql"]]
    execution_reads = [sql for sql in reads if "GROUP BY" in sql]
    assert len(execution_reads) == 1
    assert '"monitoring_taskexecution"."finished_at" >' in execution_reads[0]
