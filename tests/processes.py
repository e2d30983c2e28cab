"""Real processes for integration tests: celery worker/beat, servers, with logs and deadlines."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery", "-A", "project"]


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.1,
    exceptions: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline.

    Exceptions of the types in `exceptions` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except exceptions:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    """A DATABASE_URL for the database the test run is using (pytest-django's test database)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def process_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "NEWSBEAT_ALLOW_PRIVATE_FEEDS": "1",
    }
    env.update(extra)
    return env


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.args = args
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.output():
                raise AssertionError(f"{self.args} exited early:\n{self.output()[-3000:]}")
            return text in self.output()

        try:
            wait_for(seen, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output ---\n{self.output()[-3000:]}") from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait, then SIGKILL the whole process group."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._file.close()
        return self.popen.returncode


@contextmanager
def running(args: list[str], log: Path, env: dict[str, str]) -> Iterator[Process]:
    process = Process(args, log, env)
    try:
        yield process
    finally:
        process.stop()


def both_queues() -> str:
    """The default queue and the fetches' (NEWSBEAT_FETCH_QUEUE): one test worker runs every
    task, where a deployment runs two workers (README, Performance)."""
    return ",".join(dict.fromkeys(["celery", settings.NEWSBEAT_FETCH_QUEUE]))


def worker_args(name: str = "w1", *extra: str, queues: str = "") -> list[str]:
    return [
        *CELERY,
        "worker",
        "--loglevel=INFO",
        "--include=tests.tasks",
        f"--hostname={name}@%h",
        f"--queues={queues or both_queues()}",
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]
