import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import User
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.models import Status, TaskExecution
from monitoring.views import Run, chart_bars, percentile, window_stats

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 21)]  # 1..20

    assert percentile(values, 0.5) == 10
    assert percentile(values, 0.95) == 19
    assert percentile([7.0], 0.95) == 7
    assert percentile([], 0.5) is None


def test_window_stats_count_only_finished_runs():
    runs = [
        Run(Status.SUCCEEDED, NOW, 1.0),
        Run(Status.SUCCEEDED, NOW, 3.0),
        Run(Status.SUCCEEDED, NOW, 2.0),
        Run(Status.FAILED, NOW, 9.0),
        Run(Status.SKIPPED, NOW, 0.0),
        Run(Status.STARTED, NOW, None),
    ]

    stats = window_stats("24 h", runs)

    assert (stats.outcomes, stats.success_percent) == (4, 75)
    assert (stats.p50, stats.p95) == (2.0, 9.0)


def test_chart_draws_the_newest_run_at_the_right_edge_coloured_by_outcome():
    runs = [
        Run(Status.SUCCEEDED, NOW - timedelta(minutes=2), 4.0),
        Run(Status.FAILED, NOW - timedelta(minutes=1), 1.0),
    ]

    old, new = chart_bars(runs, NOW)

    assert (old.x, new.x) == (192, 196)  # slots 48 and 49 of 50, 4 px each
    assert (old.fill, new.fill) == ("#2e7d32", "#c62828")
    assert (old.height, new.height) == (32, 8)  # relative to the longest run


def test_chart_keeps_the_last_fifty_runs():
    runs = [Run(Status.SUCCEEDED, NOW - timedelta(minutes=i), 1.0) for i in range(60)]

    bars = chart_bars(runs, NOW)

    assert len(bars) == 50
    assert bars[0].x == 0
    assert bars[0].title.startswith("2026-11-23 11:11")  # the 50th newest


@pytest.fixture
def staff(client):
    user = User.objects.create_user("alice", password="x", is_staff=True)
    client.force_login(user)
    return user


@pytest.fixture
def job():
    interval = IntervalSchedule.objects.create(every=900, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name="poll-news", task="pipeline.poll_news", interval=interval, start_time=NOW
    )


def runs(job, statuses: list[str], last: datetime, every=timedelta(minutes=15)) -> None:
    """Runs of `job`, one per interval, the last starting at `last`; run i took i+1 s."""
    count = len(statuses)
    for i, status in enumerate(statuses):
        started = last - (count - 1 - i) * every
        TaskExecution.objects.create(
            task_id=f"{job.name}-{i}",
            task_name=job.task,
            periodic_task_name=job.name,
            status=status,
            started_at=started,
            duration=timedelta(seconds=i + 1),
        )


def test_status_page_sends_anonymous_visitors_to_the_admin_login(client):
    response = client.get("/status/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/status/"


def test_status_page_is_for_staff_only(client):
    client.force_login(User.objects.create_user("bob", password="x"))

    assert client.get("/status/").status_code == 302


def test_status_page_shows_each_job_with_its_status_and_stats(client, staff, job):
    runs(job, [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED, Status.SUCCEEDED], NOW)

    with time_machine.travel(NOW + timedelta(minutes=5), tick=False):
        response = client.get("/status/")

    assert response.status_code == 200
    [row] = response.context["rows"]
    assert row.job.status == "up"
    assert [w.success_percent for w in row.windows] == [75, 75]
    assert (row.windows[0].p50, row.windows[0].p95) == (2.0, 4.0)
    body = response.content.decode()
    assert 'class="nb-badge nb-up"' in body
    assert "75%" in body


def test_status_page_draws_one_bar_per_run(client, staff, job):
    statuses = [Status.SUCCEEDED] * 3 + [Status.FAILED, Status.SKIPPED]
    runs(job, statuses, NOW)

    with time_machine.travel(NOW, tick=False):
        body = client.get("/status/").content.decode()

    svg = re.search(r'<svg class="nb-chart".*?</svg>', body, re.S).group()
    fills = re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})"', svg)
    assert fills == ["#2e7d32"] * 3 + ["#c62828", "#9e9e9e"]


def test_status_page_only_counts_the_last_24_hours_in_the_first_window(client, staff, job):
    runs(job, [Status.FAILED, Status.SUCCEEDED], NOW, every=timedelta(days=2))

    with time_machine.travel(NOW, tick=False):
        [row] = client.get("/status/").context["rows"]

    assert [(w.label, w.outcomes) for w in row.windows] == [("24 h", 1), ("7 days", 2)]


def test_status_page_escapes_job_names(client, staff):
    interval = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="<script>alert(1)</script>", task="x", interval=interval)

    body = client.get("/status/").content.decode()

    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def sources_panel(now):
    return (
        "Sources",
        ["source", "last outcome", "failures in a row", "last fetched"],
        [["<b>BBC</b>", "http_503", 3, now]],
    )


def broken_panel(now):
    raise RuntimeError("boom")


def test_status_page_shows_panels_from_the_setting_escaped(client, staff, settings):
    settings.NEWSBEAT_STATUS_PANELS = ["tests.monitoring.test_status.sources_panel"]

    with time_machine.travel(NOW, tick=False):
        body = client.get("/status/").content.decode()

    assert "<h2>Sources</h2>" in body
    assert "<td>&lt;b&gt;BBC&lt;/b&gt;</td><td>http_503</td><td>3</td>" in body
    assert "<td>2026-11-23 12:00</td>" in body


def test_a_broken_panel_does_not_take_the_status_page_down(client, staff, settings, caplog):
    settings.NEWSBEAT_STATUS_PANELS = [
        "tests.monitoring.test_status.broken_panel",
        "tests.monitoring.test_status.sources_panel",
    ]

    response = client.get("/status/")

    assert response.status_code == 200
    assert "This panel failed" in response.content.decode()
    assert "<h2>Sources</h2>" in response.content.decode()
    assert "event=status_panel_failed" in caplog.text


def test_status_page_queries_stay_few(client, staff, job, django_assert_max_num_queries, settings):
    settings.NEWSBEAT_STATUS_PANELS = []  # other apps' panels bring their own queries
    runs(job, [Status.SUCCEEDED] * 60, NOW)

    # session, user, the user's permissions (2, for the admin's navigation), the jobs, their
    # run times, their 7 days of runs, and the last 50 runs of each job
    with django_assert_max_num_queries(8):
        client.get("/status/")


def test_admin_index_shows_the_job_status_table(admin_client, job):
    runs(job, [Status.SUCCEEDED], NOW)

    with time_machine.travel(NOW, tick=False):
        body = admin_client.get("/admin/").content.decode()

    assert 'id="job-status"' in body
    assert 'data-job="poll-news" data-status="up"' in body
    assert "<rect " in body
    assert "Django administration" in body or "Site administration" in body
