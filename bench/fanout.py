"""Target 2, fan-out: the 15-minute job (pipeline.poll_news) over 1,000 sources on a loopback
feed server that answers each request after 200 ms.

Workers as deployed by default (README, "Performance"; the fetch-worker service): the fetches go
to the project's fetch queue (NEWSBEAT_FETCH_QUEUE), consumed by FETCH_WORKERS workers with a
threads pool of FETCH_THREADS, compose's default FETCH_CONCURRENCY; poll_news itself runs on a
default prefork worker. The physical floor is sources x 0.2 s / the fetch workers' total
concurrency.

The feeds are in steady state, as every 15 minutes after the first poll: an untimed first poll
stores their entries, then each timed poll finds one new entry per feed.
"""

import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import connection

from monitoring.models import TaskExecution
from pipeline.models import Kind, Source
from pipeline.tasks import poll_news
from tests.feedserver import FeedServer, respond

from .common import Row, Worker, log, median, wait_until, workers
from .feeds import entity_names, rss
from .ingest import create_entities, reset_pipeline

DELAY = 0.2
ENTRIES = 10
# One threads-pool worker per core (the GIL keeps a process to one core), with as many threads
# as keep a core busy: about the 200 ms wait over the ~15 ms of CPU a fetch takes here.
FETCH_WORKERS = 2
FETCH_THREADS = 8


def feed_handler(body: bytes):
    def handler(request_handler) -> None:
        time.sleep(DELAY)
        respond(request_handler, 200, body, {"Content-Type": "application/rss+xml"})

    return handler


def serve(server: FeedServer, count: int, names: list[str], run: int) -> None:
    """Route every source; feed i holds entries run .. run + ENTRIES - 1 (one new per run)."""
    for i in range(count):
        server.route(f"/feed/{i}", handler=feed_handler(rss(i, names, ENTRIES, first=run)))


def poll(count: int) -> tuple[float, int]:
    """Run poll_news; seconds until the last fetch_source row finished, and how many failed."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_taskexecution")
    started = datetime.now(UTC)
    poll_news.delay()
    fetches = TaskExecution.objects.filter(task_name="pipeline.fetch_source")
    wait_until(
        lambda: fetches.exclude(status="started").count() >= count,
        timeout=60 + count * DELAY,
        interval=0.1,
    )
    last = max(fetches.values_list("finished_at", flat=True))
    return (last - started).total_seconds(), fetches.exclude(status="succeeded").count()


def run(logs: Path, sources: int, runs: int) -> list[Row]:
    concurrency = FETCH_WORKERS * FETCH_THREADS
    floor = max(DELAY, sources * DELAY / concurrency)
    names = [name for name, _ in entity_names(50)]
    reset_pipeline()
    create_entities(entity_names(50))
    threads = ("--pool=threads", f"--concurrency={FETCH_THREADS}")
    queue = settings.NEWSBEAT_FETCH_QUEUE
    specs = [Worker(f"fanout-fetch{n}", queue, threads) for n in range(FETCH_WORKERS)]
    with FeedServer() as server, workers(logs, Worker("fanout-poll", "celery"), *specs):
        Source.objects.bulk_create(
            Source(name=f"bench {i}", url=server.url(f"/feed/{i}"), kind=Kind.NEWS)
            for i in range(sources)
        )
        serve(server, sources, names, 0)
        poll(sources)  # the first poll stores every entry; the next ones find one new each
        seconds, failures = [], 0
        for r in range(1, runs + 1):
            serve(server, sources, names, r)
            elapsed, failed = poll(sources)
            log("fanout run %d: %.1f s, %d failed", r, elapsed, failed)
            seconds.append(elapsed)
            failures += failed
    reset_pipeline()
    ratio = median(seconds) / floor
    return [
        Row(
            f"2 fan-out: poll_news over {sources} sources answering in 200 ms",
            median(seconds),
            "s",
            reference=f"floor {floor:.2f} s",
            ratio=ratio,
            target="< 2",
            passed=ratio < 2 and not failures,
            note=f"fetch workers {FETCH_WORKERS} x threads {FETCH_THREADS}; {failures} failed",
        )
    ]
