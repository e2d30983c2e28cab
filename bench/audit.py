"""Target 1, audit overhead: no-op tasks through real Redis and PostgreSQL, prefork concurrency 2.

Each run fills the worker's queue at once, then times the worker from its first message to the
last acknowledgement, read from Redis (the queue's length and the `unacked` hash). Filling is
done before the clock starts: N copies of one published message with fresh task ids, pushed in
one pipeline to a holding list that is then renamed to the worker's queue.

The figure and its reference run on two long-lived workers, fed alternately in chunks, so that
load from other processes on the machine, which comes and goes within seconds, hits both sides
alike. The ratio is the median over runs of each run's ratio.
"""

import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from .common import Row, Worker, log, median, wait_until, workers

HOLD = "bench-hold"
# name: (what it is, worker environment)
REFS = {
    "naive": (
        "naive hook: ORM insert at prerun, update at postrun, default connections",
        {"BENCH_AUDIT": "naive", "BENCH_DB_REUSE": "0"},
    ),
    "two-writes": (
        "insert at prerun, update at postrun, connections reused (the hook before issue 6)",
        {"BENCH_AUDIT": "naive", "BENCH_DB_REUSE": "1"},
    ),
    "results": (
        "django-celery-results, task_track_started, default connections",
        {"BENCH_AUDIT": "results", "BENCH_DB_REUSE": "0"},
    ),
    "results-reuse": (
        "django-celery-results, task_track_started, connections reused",
        {"BENCH_AUDIT": "results", "BENCH_DB_REUSE": "1"},
    ),
    "waiting": (
        "this hook waiting for each row's answer on Django's connection (NEWSBEAT_AUDIT_WRITER=0)",
        {"BENCH_AUDIT": "full", "NEWSBEAT_AUDIT_WRITER": "0"},
    ),
    "synchronous": (
        "this hook, its commits waiting for the disk (NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT=1)",
        {"BENCH_AUDIT": "full", "BENCH_SYNCHRONOUS_COMMIT": "1"},
    ),
}


def fill(client: redis.Redis, queue: str, count: int) -> None:
    """Put `count` bench.noop messages on `queue`, all at once."""
    from .tasks import noop

    client.delete(HOLD)
    noop.apply_async(queue=HOLD)
    template = json.loads(client.rpop(HOLD))
    pipe = client.pipeline(transaction=False)
    for _ in range(count):
        task_id = str(uuid.uuid4())
        message = {**template, "headers": {**template["headers"], "id": task_id}}
        message["headers"]["root_id"] = task_id
        message["properties"] = {
            **template["properties"],
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
        }
        pipe.lpush(HOLD, json.dumps(message))
    pipe.execute()
    client.rename(HOLD, queue)


def drain_rate(client: redis.Redis, queue: str, count: int) -> float:
    """Tasks per second from the first message taken off `queue` to the last one acked."""
    timeout = 60 + count / 20  # a very slow worker still finishes: 20 tasks/s
    started = wait_until(lambda: client.llen(queue) < count and time.monotonic(), 60)
    finished = wait_until(
        lambda: not client.llen(queue) and not client.hlen("unacked") and time.monotonic(),
        timeout,
    )
    return count / (finished - started)


def empty_tables() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE monitoring_taskexecution, django_celery_results_taskresult RESTART IDENTITY"
        )


def audit_rows() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM monitoring_taskexecution GROUP BY status")
        return dict(cursor.fetchall())


def all_rows_written(count: int) -> bool:
    """Every task of the run has its `succeeded` row. The last one may land a moment after
    its task was acknowledged: the hook sends it without waiting (monitoring/audit_writer.py)."""
    try:
        return bool(wait_until(lambda: audit_rows() == {"succeeded": count}, 5, interval=0.05))
    except TimeoutError:
        return False


def timed_run(client: redis.Redis, queue: str, count: int) -> float:
    """Seconds the worker on `queue` takes for `count` no-op tasks, on an empty audit table."""
    empty_tables()
    fill(client, queue, count)
    return count / drain_rate(client, queue, count)


def run(logs: Path, tasks: int, reference_tasks: int, runs: int, chunks: int = 10) -> list[Row]:
    """Each run sends `tasks` to each of the two workers in `chunks` alternating chunks (load
    from elsewhere on the machine comes and goes within seconds); a reference run alternates
    `reference_tasks` each way with the no-hook worker."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    chunk = max(1, tasks // chunks)
    full_rates, off_rates, ratios = [], [], []
    rows_ok = True
    specs = [
        Worker("audit-off", "bench-off", env={"BENCH_AUDIT": "off"}),
        Worker("audit-full", "bench-full", env={"BENCH_AUDIT": "full"}),
        *(Worker(f"audit-{name}", f"bench-{name}", env=env) for name, (_, env) in REFS.items()),
    ]
    with workers(logs, *specs):
        for round_ in range(runs):
            seconds = {"bench-off": 0.0, "bench-full": 0.0}
            for i in range(chunks):
                for queue in sorted(seconds, reverse=i % 2 == 1):
                    seconds[queue] += timed_run(client, queue, chunk)
                    if queue == "bench-full":
                        rows_ok = rows_ok and all_rows_written(chunk)
            off, full = (chunk * chunks / seconds[q] for q in ("bench-off", "bench-full"))
            log("audit run %d: no hook %.0f/s, hook %.0f/s", round_ + 1, off, full)
            off_rates.append(off)
            full_rates.append(full)
            ratios.append(full / off)
        rows = [
            Row(
                "1 audit: tasks/s with the hook / without",
                median(full_rates),
                "tasks/s",
                reference=f"{median(off_rates):.0f}/s no hook",
                ratio=median(ratios),
                target=">= 0.90",
                passed=median(ratios) >= 0.90,
                note=f"{chunk * chunks} no-op tasks each, prefork -c 2, median of {runs}",
            ),
            Row(
                "1 audit: every task has its finished row",
                None,
                "",
                target="all rows",
                passed=rows_ok,
            ),
        ]
        for name, (label, _) in REFS.items():
            rows.append(reference(client, name, label, reference_tasks, runs))
    return rows


def reference(client: redis.Redis, name: str, label: str, tasks: int, runs: int) -> Row:
    rates, off_rates = [], []
    for _ in range(runs):
        off_rates.append(tasks / timed_run(client, "bench-off", tasks))
        rates.append(tasks / timed_run(client, f"bench-{name}", tasks))
    ratios = [rate / off for rate, off in zip(rates, off_rates, strict=True)]
    log("audit reference %s: %s", name, " ".join(f"{r:.2f}" for r in ratios))
    return Row(
        f"1 ref: {label}",
        median(rates),
        "tasks/s",
        reference=f"{median(off_rates):.0f}/s no hook",
        ratio=median(ratios),
        note=f"{tasks} tasks each",
    )


def guard_cost(calls: int = 20000) -> Row:
    """What the scheduling guards cost a plain task (no job header, first delivery): time per
    task of GuardedTask.before_start + after_return, and the Redis calls they make (none)."""
    from monitoring import broker, guards

    from .tasks import noop

    redis_calls = 0

    class CountingClient:
        def __getattr__(self, name: str) -> Any:
            nonlocal redis_calls
            redis_calls += 1
            raise AssertionError(f"a plain task's guard called Redis: {name}")

    real = broker.redis_client
    guards.redis_client = lambda: CountingClient()
    noop.push_request(id="guard-bench", delivery_info={"routing_key": "celery"}, hostname="w")
    try:
        started = time.perf_counter()
        for _ in range(calls):
            noop.before_start("guard-bench", (), {})
            noop.after_return("SUCCESS", None, "guard-bench", (), {}, None)
        seconds = time.perf_counter() - started
    finally:
        noop.pop_request()
        guards.redis_client = real
    micro = seconds / calls * 1e6
    return Row(
        "1 guards: cost per plain task",
        micro,
        "µs",
        target="no Redis call",
        passed=redis_calls == 0,
        note=f"{redis_calls} Redis calls in {calls} tasks",
    )
