"""Target 5, retention: monitoring.purge_executions deletes 1M old rows while new rows keep
coming in.

The new rows come from a separate process inserting audit-shaped rows through the hook's own
insert (monitoring.signals.insert_row), paced at a task rate a worker of this machine sustains
(RATE per second, half of what the audit benchmark's no-hook worker runs on 2 idle cores), and
never faster to catch up: an insert that waits shows as a lower rate. The rate is counted
before, during and after the purge; the figure is the rate during the purge over the rate
outside it.
"""

import multiprocessing
import queue
import time
import uuid
from datetime import timedelta

from django.db import connection, connections
from django.utils import timezone

from monitoring.tasks import purge_executions

from .common import Row, log, median

RATE = 400

FILL = """
INSERT INTO monitoring_taskexecution (task_id, task_name, periodic_task_name, status, attempt,
    worker, queue, args, kwargs, started_at, finished_at, duration, result, error_type,
    error_message, traceback, parent_id, root_id)
SELECT md5(i::text), 'bench.noop', CASE WHEN i %% 10 = 0 THEN 'poll-news' ELSE '' END,
    'succeeded', 1, 'w@vm', 'celery', '[]', '{}',
    now() - interval '40 days' - i * interval '1 second',
    now() - interval '40 days' - i * interval '1 second' + interval '5 ms',
    interval '5 ms', NULL, '', '', '', '', md5(i::text)
FROM generate_series(1, %s) i
"""


def fill(rows: int) -> None:
    """`rows` finished executions 40 days old and more, one a second going back."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_taskexecution RESTART IDENTITY")
        cursor.execute(FILL, [rows])
        cursor.execute("VACUUM ANALYZE monitoring_taskexecution")


def insert_rows(stop: multiprocessing.Event, counts: multiprocessing.Queue) -> None:
    """Insert a row every 1/RATE s until `stop`, putting the second of each on `counts`."""
    from monitoring.signals import insert_row

    connections.close_all()  # the parent's connection is not this process's to use
    started = time.monotonic()
    due = started
    while not stop.is_set():
        now = timezone.now()
        task_id = str(uuid.uuid4())
        insert_row(
            {
                "task_id": task_id,
                "task_name": "bench.noop",
                "status": "succeeded",
                "worker": "bench@vm",
                "queue": "celery",
                "started_at": now,
                "finished_at": now,
                "duration": timedelta(milliseconds=1),
                "root_id": task_id,
            }
        )
        now = time.monotonic()
        counts.put(now - started)
        due = max(due + 1 / RATE, now)  # late: carry on from now, no burst to catch up
        if due > now:
            time.sleep(due - now)
    connections.close_all()


def measure(rows: int) -> tuple[float, float, float, int, float]:
    """Rates (rows/s) before, during and after one purge; its seconds; rows it deleted."""
    fill(rows)
    connections.close_all()
    context = multiprocessing.get_context("fork")
    stop, counts = context.Event(), context.Queue()
    inserter = context.Process(target=insert_rows, args=(stop, counts), daemon=True)
    inserter.start()
    quiet = 5 if rows >= 100_000 else 1  # seconds before and after the purge
    began = time.monotonic()
    time.sleep(quiet + 1)  # the first second warms up: not counted
    purge_start = time.monotonic() - began
    deleted = purge_executions(days=30)["deleted"]
    purge_end = time.monotonic() - began
    time.sleep(quiet)
    stop.set()
    stamps = []
    while inserter.is_alive() or not counts.empty():
        try:
            stamps.append(counts.get(timeout=1))
        except queue.Empty:
            break
    inserter.join(10)
    end = time.monotonic() - began

    def rate(start: float, stop_: float) -> float:
        return sum(1 for s in stamps if start <= s < stop_) / max(stop_ - start, 1e-3)

    return (
        rate(1, purge_start),
        rate(purge_start, purge_end),
        rate(purge_end, end - 0.5),
        deleted,
        purge_end - purge_start,
    )


def run(rows: int, runs: int) -> list[Row]:
    ratios, during_rates, outside_rates, seconds = [], [], [], []
    for r in range(runs):
        before, during, after, deleted, took = measure(rows)
        outside = (before + after) / 2
        log(
            "retention run %d: %d rows purged in %.1f s; inserts/s before %.0f, during %.0f, "
            "after %.0f",
            r + 1,
            deleted,
            took,
            before,
            during,
            after,
        )
        if deleted != rows:
            raise RuntimeError(f"bench: purge deleted {deleted} rows of {rows}")
        ratios.append(during / outside)
        during_rates.append(during)
        outside_rates.append(outside)
        seconds.append(took)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_taskexecution RESTART IDENTITY")
    return [
        Row(
            "5 retention: inserts/s during a purge / without",
            median(during_rates),
            "rows/s",
            reference=f"{median(outside_rates):.0f}/s without",
            ratio=median(ratios),
            target=">= 0.80",
            passed=median(ratios) >= 0.8,
            note=f"inserts paced at {RATE}/s",
        ),
        Row(
            f"5 retention: purge of {rows} old rows",
            median(seconds),
            "s",
            reference="-",
            note=f"{rows / median(seconds):,.0f} rows/s",
        ),
    ]
