import json
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask

from monitoring.admin import EstimatedCountPaginator
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


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "cap", 2)


def many(count: int, status: str = Status.SUCCEEDED) -> None:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    TaskExecution.objects.bulk_create(
        TaskExecution(
            task_id=f"{status}-{i}",
            task_name="pipeline.fetch_source",
            status=status,
            started_at=start + timedelta(seconds=i),
        )
        for i in range(count)
    )


def test_filtered_list_counts_no_further_than_the_cap(admin_client, small_cap):
    many(4, Status.FAILED)

    response = admin_client.get(URL, {"status__exact": "failed"})

    assert response.context["cl"].result_count == 2
    assert response.context["cl"].paginator.count_kind == "at_least"
    assert "more than 2 task executions" in response.content.decode()


def test_unfiltered_list_of_a_large_table_shows_the_planners_estimate(admin_client, small_cap):
    many(5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE monitoring_taskexecution")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL)

    assert response.context["cl"].paginator.count_kind == "estimate"
    assert "about 5 task executions" in response.content.decode()
    assert not [q for q in queries if "COUNT(" in q["sql"].upper()]


def test_unfiltered_list_of_a_small_table_is_counted_exactly(admin_client, executions):
    response = admin_client.get(URL)

    assert response.context["cl"].result_count == 2
    assert response.context["cl"].paginator.count_kind == "exact"


def test_pages_stop_at_the_cap_whatever_the_estimate(small_cap):
    many(5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE monitoring_taskexecution")

    paginator = EstimatedCountPaginator(TaskExecution.objects.all(), per_page=1)

    assert (paginator.count, paginator.num_pages) == (5, 2)


def test_filters_offer_registered_tasks_and_jobs_without_reading_executions(admin_client):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL)

    choices = {spec.title: [c[0] for c in spec.lookup_choices] for spec in filters(response)}
    assert {"pipeline.fetch_source", "pipeline.poll_news", "monitoring.reap_lost"} <= set(
        choices["task"]
    )
    assert set(choices["job"]) == set(settings.NEWSBEAT_PERIODIC_JOBS)
    assert not [q for q in queries if "DISTINCT" in q["sql"].upper()]


def filters(response) -> list:
    return [spec for spec in response.context["cl"].filter_specs if hasattr(spec, "lookup_choices")]


def test_job_filter_still_works_for_a_job_that_was_deleted(admin_client):
    gone = TaskExecution.objects.create(
        task_id="old",
        task_name="x.y",
        periodic_task_name="deleted-job",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    response = admin_client.get(URL, {"periodic_task_name": "deleted-job"})

    assert list(response.context["cl"].result_list) == [gone]
    [job_filter] = [spec for spec in filters(response) if spec.title == "job"]
    assert job_filter.lookup_choices == [("deleted-job", "deleted-job")]


def test_detail_links_to_parent_children_job_and_flower(admin_client, settings):
    settings.NEWSBEAT_FLOWER_URL = "http://flower.example:5555/"
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    job = PeriodicTask.objects.get(name="poll-news")
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    poll = TaskExecution.objects.create(
        task_id="poll-1",
        task_name="pipeline.poll_news",
        periodic_task_name="poll-news",
        parent_id="manual-0",
        started_at=start,
    )
    child = TaskExecution.objects.create(
        task_id="fetch-1", task_name="pipeline.fetch_source", parent_id="poll-1", started_at=start
    )

    body = admin_client.get(f"{URL}{poll.pk}/change/").content.decode()

    assert f'<a href="{URL}?q=manual-0">manual-0</a>' in body
    assert f'<a href="{URL}{child.pk}/change/">pipeline.fetch_source (started)</a>' in body
    assert f'<a href="{URL}?parent_id=poll-1">all children</a>' in body
    assert (
        f'<a href="/admin/django_celery_beat/periodictask/{job.pk}/change/">poll-news</a>' in body
    )
    assert 'href="http://flower.example:5555/task/poll-1"' in body


def test_children_link_lists_the_children(admin_client):
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    child = TaskExecution.objects.create(
        task_id="c1", task_name="pipeline.fetch_source", parent_id="p1", started_at=start
    )
    TaskExecution.objects.create(task_id="other", task_name="x", started_at=start)

    response = admin_client.get(URL, {"parent_id": "p1"})

    assert list(response.context["cl"].result_list) == [child]


def test_job_admin_page_edits_the_jobs_grace(admin_client):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    job = PeriodicTask.objects.get(name="poll-news")

    body = admin_client.get(f"/admin/django_celery_beat/periodictask/{job.pk}/change/")

    assert 'name="policy-0-grace"' in body.content.decode()
