import json
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from monitoring.beat import sync_jobs
from monitoring.models import Status, TaskExecution

pytestmark = pytest.mark.django_db
URL = "/admin/monitoring/taskexecution/"


@pytest.fixture
def executions():
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    ok = TaskExecution.objects.create(
        task_id="aaaa-1111",
        task_name="pipeline.poll_news",
        periodic_task_name="poll-news",
        status=Status.SUCCEEDED,
        worker="w1@host",
        started_at=start,
        finished_at=start + timedelta(seconds=2),
        duration=timedelta(seconds=2),
        result={"sources": 3},
    )
    failed = TaskExecution.objects.create(
        task_id="bbbb-2222",
        task_name="pipeline.fetch_source",
        status=Status.FAILED,
        worker="w1@host",
        started_at=start + timedelta(minutes=1),
        error_type="FetchError",
        error_message="feed http://127.0.0.1/x returned 404",
        traceback="Traceback (most recent call last):\n  boom",
    )
    return ok, failed


def test_list_shows_executions_newest_first(admin_client, executions):
    response = admin_client.get(URL)

    assert response.status_code == 200
    body = response.content.decode()
    assert body.index("pipeline.fetch_source") < body.index("pipeline.poll_news")


def test_list_filters_by_status_task_and_job(admin_client, executions):
    failed = admin_client.get(URL, {"status__exact": "failed"})
    assert list(failed.context["cl"].result_list) == [executions[1]]

    by_job = admin_client.get(URL, {"periodic_task_name": "poll-news"})
    assert by_job.status_code == 200
    assert list(by_job.context["cl"].result_list) == [executions[0]]

    by_task = admin_client.get(URL, {"task_name": "pipeline.fetch_source"})
    assert list(by_task.context["cl"].result_list) == [executions[1]]


def test_search_finds_an_execution_by_task_id(admin_client, executions):
    response = admin_client.get(URL, {"q": "bbbb-2222"})

    assert list(response.context["cl"].result_list) == [executions[1]]


def test_detail_shows_traceback_and_result_and_cannot_be_saved(admin_client, executions):
    ok, failed = executions

    detail = admin_client.get(f"{URL}{failed.pk}/change/")
    assert detail.status_code == 200
    assert "Traceback (most recent call last)" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()

    assert "sources" in admin_client.get(f"{URL}{ok.pk}/change/").content.decode()
    assert (
        admin_client.post(f"{URL}{failed.pk}/change/", {"status": "succeeded"}).status_code == 403
    )
    assert admin_client.get(f"{URL}add/").status_code == 403
    failed.refresh_from_db()
    assert failed.status == Status.FAILED


def test_run_now_enqueues_the_job_with_its_name(admin_client, broker):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    job = PeriodicTask.objects.get(name="poll-news")
    url = "/admin/django_celery_beat/periodictask/"
    assert "run_tasks" in admin_client.get(url).content.decode()

    response = admin_client.post(
        url, {"action": "run_tasks", "_selected_action": [job.pk]}, follow=True
    )

    assert response.status_code == 200
    [raw] = broker.lrange("celery", 0, -1)
    headers = json.loads(raw)["headers"]
    assert (headers["task"], headers["periodic_task_name"]) == ("pipeline.poll_news", "poll-news")
