from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from django.conf import settings

from monitoring.audit_writer import close_writer
from tests.processes import process_env, running, worker_args


@pytest.fixture(autouse=True)
def _close_audit_writer():
    """A test that runs the audit hooks in this process may open the AuditWriter's connection:
    close it, or the test database cannot be dropped at the end."""
    yield
    close_writer()


@pytest.fixture
def broker():
    """The test Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def start_worker(transactional_db, broker, tmp_path: Path):
    """Start real `celery worker` processes on the test database and Redis; stopped at the end.

    Each consumes `queues` (comma-separated), by default every queue the project routes to.
    """
    with ExitStack() as stack:

        def start(name: str = "w1", *extra: str, queues: str = "", **env: str):
            log = tmp_path / f"worker-{name}.log"
            process = stack.enter_context(
                running(worker_args(name, *extra, queues=queues), log, process_env(**env))
            )
            process.wait_for_output("ready.", timeout=60)
            return process

        yield start


@pytest.fixture
def worker(start_worker):
    """A real `celery worker` process (prefork, concurrency 1)."""
    return start_worker("w1", "--concurrency=1")
