"""The execution admin over NEWSBEAT_SCALE_ROWS audit rows in PostgreSQL (default 5 million).

Checks the shape of every query the pages run, not their timings (bench/read_side.py measures
those): each reads monitoring_taskexecution through an index, never a sequential scan, reads a
bounded number of rows, and the only COUNT is the paginator's, capped by a LIMIT.

The default is half the 10M of issue 5 to keep this test near a minute and a half on 2 cores;
with NEWSBEAT_SCALE_ROWS=10000000 the load alone takes about three minutes. The planner picks
the same plans from one million rows up (checked at 1M, 5M and 10M): the periodic jobs' rows
are the same at any size, and the fetches they fan out only grow denser.
"""

import os
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench.read_side import load_executions
from monitoring.admin import EstimatedCountPaginator
from monitoring.beat import sync_jobs
from monitoring.models import TaskExecution

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROWS = int(os.environ.get("NEWSBEAT_SCALE_ROWS", "5000000"))
TABLE = TaskExecution._meta.db_table
URL = "/admin/monitoring/taskexecution/"
# The most rows one scan may read: two capped counts' worth.
READ_MAX = 2 * EstimatedCountPaginator.cap


@pytest.fixture(scope="module")
def loaded(django_db_setup, django_db_blocker):
    """The rows, loaded once for the module (committed: VACUUM cannot run in a transaction)
    and truncated at its end. Returns the newest poll-news execution."""
    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    with django_db_blocker.unblock():
        # ANALYZE without VACUUM: half a minute quicker at 10M rows, and the plans read the
        # same indexes (as index scans where a vacuumed table allows index-only ones).
        load_executions(ROWS, timezone.now(), vacuum=False)
        newest = TaskExecution.objects.filter(periodic_task_name="poll-news").latest("started_at")
        yield newest
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {TABLE}")


def plan_nodes(plan: dict[str, Any], parents: tuple = ()) -> Any:
    yield plan, parents
    for child in plan.get("Plans", []):
        yield from plan_nodes(child, (*parents, plan))


def explain(sql: str) -> dict[str, Any]:
    """The plan PostgreSQL ran `sql` with, with the rows each node read (EXPLAIN ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        return cursor.fetchone()[0][0]["Plan"]


def table_queries(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if f'FROM "{TABLE}"' in q["sql"]]


def assert_reads_through_indexes(sql: str) -> None:
    """No sequential scan of the audit table; no scan of it that reads more than READ_MAX
    rows (counting those its filter dropped), so no walk of a whole index either, as a
    DISTINCT for a filter's choices or an index that does not match the filter would do; no
    aggregate over all of it: an aggregate only on a Limit (a capped count, never COUNT(*))."""
    for node, parents in plan_nodes(explain(sql)):
        if node.get("Relation Name") != TABLE:
            continue
        assert node["Node Type"] != "Seq Scan", f"sequential scan in:\n{sql}"
        loops = node["Actual Loops"]
        read = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * loops
        assert read <= READ_MAX, f"{node['Node Type']} read {read:.0f} rows in:\n{sql}"
        types = [parent["Node Type"] for parent in parents]
        if "Aggregate" in types:
            below = types[len(types) - 1 - types[::-1].index("Aggregate") :]
            assert "Limit" in below, f"aggregate over the whole table in:\n{sql}"


@pytest.fixture
def jobs(db):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)


# The list's query string for each case; {task_id} is the newest poll-news run's.
CASES = {
    "unfiltered": {},
    "status rare": {"status__exact": "failed"},
    "status common": {"status__exact": "succeeded"},
    "task rare": {"task_name": "monitoring.purge_executions"},
    "task common": {"task_name": "pipeline.fetch_source"},
    "job rare": {"periodic_task_name": "purge-executions"},
    "job common": {"periodic_task_name": "reap-lost-executions"},
    "started past 7 days": {"started_at__gte": "{week_ago}"},
    "status and task": {"status__exact": "failed", "task_name": "pipeline.fetch_source"},
    "search by task id": {"q": "{task_id}"},
    "children of an execution": {"parent_id": "{task_id}"},
    "second page": {"p": "2"},
}


@pytest.mark.parametrize("case", CASES)
def test_execution_list_reads_an_index_and_counts_no_further_than_the_cap(
    case, loaded, jobs, admin_client
):
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week_ago = str(midnight - timedelta(days=7))  # as the admin's "Past 7 days" link sends it
    params = {
        key: value.format(task_id=loaded.task_id, week_ago=week_ago)
        for key, value in CASES[case].items()
    }

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL, params)

    assert response.status_code == 200
    # session, user, the two filters' choices (periodic tasks), the count, the page
    assert len(queries.captured_queries) == 6
    reads = table_queries(queries)
    # The page, and unless the list is unfiltered (estimated count) the capped count.
    assert len(reads) == (1 if case in ("unfiltered", "second page") else 2)
    for sql in reads:
        assert_reads_through_indexes(sql)


def test_unfiltered_list_estimates_instead_of_counting(loaded, jobs, admin_client):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL)

    assert response.context["cl"].paginator.count_kind == "estimate"
    assert response.context["cl"].result_count == pytest.approx(ROWS, rel=0.1)
    assert not [sql for sql in table_queries(queries) if "COUNT(" in sql.upper()]


def test_execution_page_reads_an_index_for_the_row_its_job_and_its_children(
    loaded, jobs, admin_client
):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{URL}{loaded.pk}/change/")

    assert response.status_code == 200
    assert "all children" in response.content.decode()
    reads = table_queries(queries)
    assert len(reads) == 2  # the row, its children
    for sql in reads:
        assert_reads_through_indexes(sql)


@pytest.mark.parametrize("path", ["/health/", "/health/?job=purge-executions", "/status/"])
def test_health_and_status_read_indexes(path, loaded, jobs, admin_client, broker):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(path)

    assert response.status_code in (200, 503)
    reads = table_queries(queries)
    assert reads
    for sql in reads:
        assert_reads_through_indexes(sql)
