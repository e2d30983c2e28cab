"""The read side at scale (issue 5): admin, health, status and metrics over millions of audit rows.

`run(rows)` fills monitoring_taskexecution with `rows` executions (INSERT ... SELECT
generate_series, no Python loop) and times each page in-process with Django's test client, a
logged-in superuser, the median of RUNS requests after a warm-up. Targets: 500 ms for the
execution list, its filters and its search, 100 ms for an execution's page (issue 5); 100 ms
for the /health/ probe and 500 ms for /status/; 200 ms for /metrics, which reads the rollup
plus the rows that finished since it last ran (monitoring/metrics.py): the bench runs the
rollup once after the load, as the every-minute job would have (a GROUP BY over the whole
table, about 2.7 s at 10M rows on 2 cores, what each scrape cost before the rollup).

It needs Django set up on a database it may fill and empty: it refuses any other than the bench
harness's `<name>_bench` or a test database (`test_<name>`). tests/monitoring/test_admin_scale.py
loads the same rows with `load_executions` and checks the query plans.
"""

import statistics
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

RUNS = 5
TABLE = "monitoring_taskexecution"
# The metrics rollup: emptied with the audit table, or its totals and watermark would outlive
# the rows they count.
ROLLUP_TABLES = "monitoring_executiontotal, monitoring_executionrollup"
SPAN = timedelta(days=30)
# The periodic jobs of settings.NEWSBEAT_PERIODIC_JOBS, each run once per period over SPAN.
JOBS = (
    ("poll-news", "pipeline.poll_news", 15 * 60),
    ("poll-stories", "pipeline.poll_stories", 60 * 60),
    ("reap-lost-executions", "monitoring.reap_lost", 5 * 60),
    ("purge-executions", "monitoring.purge_executions", 24 * 60 * 60),
)
COLUMNS = (
    "task_id, task_name, periodic_task_name, status, attempt, worker, queue, args, kwargs, "
    "started_at, finished_at, duration, result, error_type, error_message, traceback, "
    "parent_id, root_id"
)
# One row per run of each job over SPAN; 1 in 100 failed.
PERIODIC_SQL = f"""
INSERT INTO {TABLE} ({COLUMNS})
SELECT md5(j.name || ':' || s)::uuid::text, j.task, j.name,
       CASE WHEN s %% 100 = 42 THEN 'failed' ELSE 'succeeded' END,
       1, 'w1@host', 'celery', '[]', '{{}}',
       %(start)s + s * j.every * interval '1 second',
       %(start)s + s * j.every * interval '1 second' + interval '200 milliseconds',
       interval '200 milliseconds' + (s %% 7) * interval '50 milliseconds',
       NULL, CASE WHEN s %% 100 = 42 THEN 'OperationalError' ELSE '' END, '', '', '', ''
FROM (VALUES {", ".join(f"('{name}', '{task}', {every})" for name, task, every in JOBS)})
     AS j(name, task, every)
CROSS JOIN LATERAL generate_series(0, %(span)s / j.every - 1) AS s
"""
# The fetches the news and story polls fan out, spread evenly over SPAN, each the child of the
# poll-news run of its quarter hour: 1 in 50 failed, 1 in 97 retried, the last 10 running.
FETCH_SQL = f"""
INSERT INTO {TABLE} ({COLUMNS})
SELECT md5('fetch:' || k)::uuid::text, 'pipeline.fetch_source', '',
       CASE WHEN k >= %(n)s - 10 THEN 'started'
            WHEN k %% 50 = 7 THEN 'failed'
            WHEN k %% 97 = 3 THEN 'retrying'
            ELSE 'succeeded' END,
       1 + (k %% 97 = 3)::int, 'w' || (k %% 4) || '@host', 'celery',
       '[' || (k %% 40) || ']', '{{}}',
       at, CASE WHEN k >= %(n)s - 10 THEN NULL ELSE at + (k::bigint * 7919 %% 3000) * ms END,
       CASE WHEN k >= %(n)s - 10 THEN NULL ELSE (k::bigint * 7919 %% 3000) * ms END,
       NULL,
       CASE WHEN k %% 50 = 7 THEN 'FetchError' ELSE '' END,
       CASE WHEN k %% 50 = 7 THEN 'feed https://example.org/' || (k %% 40) || ' returned 503'
            ELSE '' END,
       '',
       md5('poll-news:' || floor(extract(epoch FROM at - %(start)s) / 900)::bigint)::uuid::text,
       md5('poll-news:' || floor(extract(epoch FROM at - %(start)s) / 900)::bigint)::uuid::text
FROM generate_series(0, %(n)s - 1) AS k,
     LATERAL (SELECT %(start)s + k * (%(span)s::float / %(n)s) * interval '1 second' AS at,
                     interval '1 millisecond' AS ms) AS t
"""


def periodic_rows() -> int:
    return sum(int(SPAN.total_seconds()) // every for _, _, every in JOBS)


def load_executions(rows: int, now: datetime, vacuum: bool = True) -> int:
    """Replace the audit table's rows with about `rows` executions over the 30 days up to
    `now` (never fewer than the periodic jobs' runs, ~12,000). Returns the number loaded.

    The table's secondary indexes are dropped for the load and built again after it from the
    model's Meta.indexes: building an index over 10M rows is several times faster than
    updating it 10M times, and gives the same index. Then VACUUM ANALYZE, as autovacuum would
    (the planner needs the statistics; index-only scans need the visibility map), or with
    `vacuum` False only ANALYZE, quicker. Must run outside a transaction (VACUUM).
    """
    from monitoring.models import TaskExecution

    fetches = max(0, rows - periodic_rows())
    params = {"start": now - SPAN, "span": int(SPAN.total_seconds()), "n": fetches}
    indexes = TaskExecution._meta.indexes
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLE}, {ROLLUP_TABLES}")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for index in indexes:
            cursor.execute(f"DROP INDEX IF EXISTS {connection.ops.quote_name(index.name)}")
        try:
            cursor.execute(PERIODIC_SQL, params)
            loaded = cursor.rowcount
            if fetches:
                cursor.execute(FETCH_SQL, params)
                loaded += cursor.rowcount
        finally:
            with connection.schema_editor() as editor:
                for index in indexes:
                    editor.add_index(TaskExecution, index)
        cursor.execute(f"VACUUM ANALYZE {TABLE}" if vacuum else f"ANALYZE {TABLE}")
        cursor.execute("RESET maintenance_work_mem")
    return loaded


def check_disposable() -> None:
    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql" or not (
        name.endswith("_bench") or name.startswith("test_")
    ):
        raise RuntimeError(
            f"bench.read_side fills and empties monitoring_taskexecution: run it on a "
            f"PostgreSQL bench or test database, not {connection.vendor} {name!r}"
        )


def timed(fetch: Any) -> float:
    """Median milliseconds of RUNS calls of `fetch` after one warm-up call."""
    fetch()
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = fetch()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code not in (200, 503):  # 503: a job is down, still a full answer
            raise RuntimeError(f"{response.request['PATH_INFO']} answered {response.status_code}")
    return statistics.median(samples)


def run(rows: int) -> list[dict[str, Any]]:
    """Load `rows` executions, time the read side, empty the table again."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    from monitoring.beat import sync_jobs
    from monitoring.models import TaskExecution
    from monitoring.tasks import rollup_executions

    check_disposable()
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
    now = timezone.now()
    started = time.perf_counter()
    loaded = load_executions(rows, now)
    load_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        folded = rollup_executions()["folded"]
        rollup_seconds = time.perf_counter() - started
        user, _ = User.objects.get_or_create(
            username="bench", defaults={"is_staff": True, "is_superuser": True}
        )
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        url = "/admin/monitoring/taskexecution/"
        poll = TaskExecution.objects.filter(periodic_task_name="poll-news").latest("started_at")
        # As the admin's "Past 7 days" link sends it.
        midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
        week_ago = str(midnight - timedelta(days=7))
        pages = [
            ("admin list", url, {}, 500),
            ("admin filter status=failed", url, {"status__exact": "failed"}, 500),
            ("admin filter status=succeeded", url, {"status__exact": "succeeded"}, 500),
            ("admin filter task (common)", url, {"task_name": "pipeline.fetch_source"}, 500),
            ("admin filter task (rare)", url, {"task_name": "monitoring.purge_executions"}, 500),
            ("admin filter job (common)", url, {"periodic_task_name": "reap-lost-executions"}, 500),
            ("admin filter job (rare)", url, {"periodic_task_name": "purge-executions"}, 500),
            ("admin filter started past 7 days", url, {"started_at__gte": week_ago}, 500),
            ("admin search by task id", url, {"q": poll.task_id}, 500),
            ("admin execution page", f"{url}{poll.pk}/change/", {}, 100),
            ("admin children of a poll", url, {"parent_id": poll.task_id}, 500),
            ("/health/", "/health/", {}, 100),
            ("/status/", "/status/", {}, 500),
            ("/metrics", "/metrics", {}, 200),
        ]
        results = [
            {
                "name": f"read: rows loaded ({rows:,} asked)",
                "value": loaded,
                "unit": "rows",
                "target": None,
            },
            {
                "name": "read: load (generate_series, indexes, VACUUM ANALYZE)",
                "value": round(load_seconds, 1),
                "unit": "s",
                "target": None,
            },
            {
                "name": f"read: first metrics rollup ({folded:,} rows folded)",
                "value": round(rollup_seconds, 1),
                "unit": "s",
                "target": None,
            },
        ]
        for name, path, params, target in pages:
            ms = timed(lambda path=path, params=params: client.get(path, params))
            results.append(
                {"name": f"read: {name}", "value": round(ms, 1), "unit": "ms", "target": target}
            )
        return results
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {TABLE}, {ROLLUP_TABLES}")
