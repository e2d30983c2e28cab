"""What every benchmark shares: the bench database, worker processes, medians, the result rows."""

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.processes import ROOT, Process, running

CELERY = [sys.executable, "-m", "celery", "-A", "project"]


@dataclass
class Row:
    """One line of the table. `passed` is None for a figure shown for information only."""

    name: str
    value: float | None
    unit: str
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""


def log(message: str, *args: Any) -> None:
    """Progress on stderr; the table alone goes to stdout."""
    print(time.strftime("%H:%M:%S"), message % args, file=sys.stderr, flush=True)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Iterable[float], share: float) -> float:
    """The nearest-rank percentile (`share` 0.99 for p99) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


def bench_database_url(url: str) -> str:
    """The bench's own database next to the one `url` names: `<name>_bench`.

    The benchmarks truncate and fill tables, so they never run on a database someone uses.
    """
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or parts.scheme not in ("postgres", "postgresql"):
        raise SystemExit(f"bench: DATABASE_URL={url!r} must name a PostgreSQL database")
    return urlunsplit(parts._replace(path=f"/{name}_bench"))


def create_database(url: str) -> None:
    """CREATE DATABASE for `url` unless it exists (through the server's `postgres` database)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def process_env(**extra: str) -> dict[str, str]:
    """The environment of the workers and beat the benchmarks start."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "NEWSBEAT_ALLOW_PRIVATE_FEEDS": "1",
    }
    env.update(extra)
    return env


def worker_args(name: str, queue: str, *extra: str) -> list[str]:
    return [
        *CELERY,
        "worker",
        "--loglevel=INFO",
        "--include=bench.tasks",
        f"--hostname={name}@%h",
        f"--queues={queue}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        *extra,
    ]


@dataclass
class Worker:
    """What to start: `celery worker` named `name` consuming `queue`, with `args` and `env`."""

    name: str
    queue: str
    args: tuple[str, ...] = ("--concurrency=2",)
    env: dict[str, str] | None = None


@contextmanager
def workers(logs: Path, *specs: Worker):
    """Start real `celery worker` processes on the bench settings all at once (they take
    seconds each to start); yield them ready; stop them at the end."""
    with ExitStack() as stack:
        processes = [
            stack.enter_context(
                running(
                    worker_args(spec.name, spec.queue, *spec.args),
                    logs / f"{spec.name}.log",
                    process_env(**(spec.env or {})),
                )
            )
            for spec in specs
        ]
        for process in processes:
            process.wait_for_output("ready.", timeout=120)
        yield processes


@contextmanager
def worker(logs: Path, name: str, queue: str, *args: str, **env: str):
    with workers(logs, Worker(name, queue, args or ("--concurrency=2",), env)) as [process]:
        yield process


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: condition not met within {timeout:.0f}s: {condition}")
        time.sleep(interval)


def process_rss(process: Process) -> int:
    """Resident memory of a process and its children (a worker's pool), in bytes."""
    import psutil

    parent = psutil.Process(process.popen.pid)
    total = parent.memory_info().rss
    for child in parent.children(recursive=True):
        with suppress(psutil.NoSuchProcess):  # a child that just exited
            total += child.memory_info().rss
    return total
