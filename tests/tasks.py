"""Tasks the integration tests send to real workers (loaded with `celery worker --include`)."""

import contextlib
import time

from celery import shared_task
from celery.signals import task_postrun


@shared_task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="tests.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@shared_task(name="tests.flaky", bind=True, max_retries=3, default_retry_delay=0)
def flaky(self, failures: int) -> str:
    """Fails `failures` times, retrying each time, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return f"succeeded on attempt {self.request.retries + 1}"


@shared_task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.backend_pid")
def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@shared_task(name="tests.die_once", bind=True)
def die_once(self, marker: str) -> str:
    """Kills its own worker process the first time (as the OOM killer would), then succeeds."""
    import os
    import signal
    from pathlib import Path

    path = Path(marker)
    if not path.exists():
        path.write_text(self.request.id)
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@shared_task(name="tests.die_always")
def die_always() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.hang")
def hang(seconds: float) -> None:
    """Ignores the soft time limit, so only the hard limit can stop it."""
    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(SoftTimeLimitExceeded):
            time.sleep(0.1)


@shared_task(name="tests.die_after_postrun")
def die_after_postrun(marker: str) -> str:
    """Succeeds; the first time, its worker process is killed right after the audit hook's
    task_postrun sent the row (see the receiver below), its answer unread."""
    return "done"


def _kill_after_postrun(sender=None, task_id: str = "", args=(), **kwargs) -> None:
    import os
    import signal
    from pathlib import Path

    if getattr(sender, "name", "") != "tests.die_after_postrun":
        return
    path = Path(args[0])
    if not path.exists():
        path.write_text(task_id)
        os.kill(os.getpid(), signal.SIGKILL)


# Connected after the audit hooks (monitoring's AppConfig.ready() ran before this module was
# imported by the worker), so it runs after the final row was sent.
task_postrun.connect(_kill_after_postrun, dispatch_uid="tests.kill_after_postrun")
