from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.processes import process_env, running, worker_args


@pytest.fixture
def broker():
    """The test Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def worker(transactional_db, broker, tmp_path: Path):
    """A real `celery worker` process (prefork, concurrency 1) on the test database and Redis."""
    with running(worker_args("w1", "--concurrency=1"), tmp_path / "worker.log", process_env()) as w:
        w.wait_for_output("ready.", timeout=60)
        yield w
