import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape

import pytest
import time_machine
from django.db import connection

from monitoring.models import Status, TaskExecution
from pipeline.fetch import FetchError
from pipeline.models import HOUR, Article, Entity, Kind, SentimentPoint, Source
from pipeline.parse import ParsedEntry, ParseError
from pipeline.tasks import (
    aggregate_sentiment,
    fetch_source,
    poll_news,
    poll_stories,
    store_entries,
)
from tests import tasks as test_tasks
from tests.processes import wait_for

T10 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

ITEMS = [
    ("g1", "Apple posts an excellent, record quarter", T10 + timedelta(minutes=5)),
    ("g2", "Tesla recall over a dangerous fault angers owners", T10 + timedelta(minutes=10)),
    ("g3", "Apple and Tesla executives meet on Tuesday", T10 + timedelta(minutes=20)),
]


def rss(items=ITEMS) -> bytes:
    body = "".join(
        f"<item><title>{escape(title)}</title><link>https://news.example.com/{guid}</link>"
        f"<guid>{guid}</guid><pubDate>{format_datetime(when)}</pubDate></item>"
        for guid, title, when in items
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Test</title>'
        f"{body}</channel></rss>"
    ).encode()


RSS_HEADERS = {"Content-Type": "application/rss+xml"}


@pytest.fixture
def entities(db):
    return {
        "apple": Entity.objects.create(name="Apple", slug="apple", aliases=["Apple Inc."]),
        "tesla": Entity.objects.create(name="Tesla", slug="tesla"),
    }


def make_source(server, path="/feed.xml", kind=Kind.NEWS, enabled=True, **route) -> Source:
    server.route(path, **{"body": rss(), "headers": RSS_HEADERS, **route})
    return Source.objects.create(name=path, url=server.url(path), kind=kind, enabled=enabled)


def entity_slugs(guid: str) -> list[str]:
    return sorted(Article.objects.get(guid=guid).entities.values_list("slug", flat=True))


# --- fetch_source, in process -------------------------------------------------------------------


@pytest.mark.django_db
def test_fetch_stores_entries_with_entities_and_sentiment(feed_server, entities):
    source = make_source(feed_server)

    summary = fetch_source(source.pk)

    assert summary == {
        "source": source.pk,
        "outcome": "ok",
        "fetched": 3,
        "new": 3,
        "duplicate": 0,
        "skipped": 0,
        "problem": None,
    }
    first = Article.objects.get(guid="g1")
    assert (first.title, first.url) == (ITEMS[0][1], "https://news.example.com/g1")
    assert first.published == ITEMS[0][2]
    assert first.sentiment > 0.05
    assert Article.objects.get(guid="g2").sentiment < -0.05
    assert entity_slugs("g1") == ["apple"]
    assert entity_slugs("g3") == ["apple", "tesla"]
    source.refresh_from_db()
    assert (source.last_outcome, source.consecutive_failures, source.last_error) == ("ok", 0, "")
    assert source.last_fetched_at is not None


@pytest.mark.django_db
def test_second_fetch_of_the_same_feed_stores_each_article_once(feed_server, entities):
    source = make_source(feed_server)
    fetch_source(source.pk)

    summary = fetch_source(source.pk)

    assert (summary["fetched"], summary["new"], summary["duplicate"]) == (3, 0, 3)
    assert Article.objects.count() == 3
    assert Article.entities.through.objects.count() == 4


@pytest.mark.django_db
def test_entries_already_stored_are_not_scored_again(feed_server, entities, monkeypatch):
    source = make_source(feed_server)
    fetch_source(source.pk)
    scored = []
    monkeypatch.setattr("pipeline.tasks.score_text", lambda text: scored.append(text) or 0.0)

    fetch_source(source.pk)

    assert scored == []


@pytest.mark.django_db
def test_only_new_entries_of_a_grown_feed_are_stored(feed_server, entities):
    source = make_source(feed_server)
    fetch_source(source.pk)
    later = ("g4", "Apple shares slump", T10 + HOUR)
    feed_server.route("/feed.xml", body=rss([*ITEMS, later]), headers=RSS_HEADERS)

    summary = fetch_source(source.pk)

    assert (summary["new"], summary["duplicate"]) == (1, 3)
    assert entity_slugs("g4") == ["apple"]


@pytest.mark.django_db
def test_stored_etag_makes_a_conditional_get_and_304_is_not_modified(feed_server, entities):
    headers = {**RSS_HEADERS, "ETag": '"v1"', "Last-Modified": "Fri, 20 Nov 2026 10:00:00 GMT"}
    source = make_source(feed_server, headers=headers)
    fetch_source(source.pk)
    feed_server.route("/feed.xml", status=304)

    summary = fetch_source(source.pk)

    sent = feed_server.requests[-1][2]
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == "Fri, 20 Nov 2026 10:00:00 GMT"
    assert (summary["outcome"], summary["fetched"], summary["new"]) == ("not_modified", 0, 0)
    source.refresh_from_db()
    assert (source.last_outcome, source.etag) == ("not_modified", '"v1"')
    assert Article.objects.count() == 3


@pytest.mark.django_db
def test_feed_with_a_problem_stores_what_it_recovered_and_notes_the_problem(feed_server):
    cut_off = rss().split(b"</channel>")[0]  # no closing tags
    source = make_source(feed_server, body=cut_off)

    summary = fetch_source(source.pk)

    assert (summary["outcome"], summary["new"]) == ("ok", 3)
    assert summary["problem"]
    source.refresh_from_db()
    assert (source.last_outcome, source.last_error) == ("ok", summary["problem"])


@pytest.mark.django_db
def test_http_404_is_recorded_on_the_source_and_raised(feed_server):
    source = make_source(feed_server, status=404, body=b"gone")

    with pytest.raises(FetchError) as raised:
        fetch_source(source.pk)

    assert raised.value.reason == "http_404"
    source.refresh_from_db()
    assert (source.last_outcome, source.consecutive_failures) == ("http_404", 1)
    assert source.last_error == f"feed {source.url} returned 404"
    assert Article.objects.count() == 0


@pytest.mark.django_db
def test_unparseable_feed_is_recorded_as_parse_error_and_raised(feed_server):
    html = b"<html><body><p>Not a feed</p></body></html>"
    source = make_source(feed_server, body=html, headers={"Content-Type": "text/html"})

    with pytest.raises(ParseError):
        fetch_source(source.pk)

    source.refresh_from_db()
    assert source.last_outcome.startswith("parse_error: ")
    assert source.consecutive_failures == 1


@pytest.mark.django_db
def test_success_after_failures_resets_the_failure_count(feed_server):
    source = make_source(feed_server, status=404)
    for _ in range(2):
        with pytest.raises(FetchError):
            fetch_source(source.pk)
    source.refresh_from_db()
    assert source.consecutive_failures == 2
    feed_server.route("/feed.xml", body=rss(), headers=RSS_HEADERS)

    fetch_source(source.pk)

    source.refresh_from_db()
    assert (source.last_outcome, source.consecutive_failures) == ("ok", 0)


@pytest.mark.django_db
def test_disabled_source_is_skipped_without_a_request(feed_server):
    source = make_source(feed_server, enabled=False)

    summary = fetch_source(source.pk)

    assert (summary["outcome"], summary["problem"]) == ("skipped", "source is disabled")
    assert feed_server.requests == []


@pytest.mark.django_db
def test_missing_source_is_skipped():
    summary = fetch_source(999_999)

    assert (summary["source"], summary["outcome"]) == (999_999, "skipped")
    assert summary["problem"] == "source does not exist"


@pytest.mark.django_db
def test_entries_without_guid_are_skipped_and_repeats_count_as_duplicates():
    source = Source.objects.create(name="s", url="https://example.com/s.xml")
    entries = [
        ParsedEntry(guid="a", url="", title="Good news", summary="", published=None),
        ParsedEntry(guid="", url="", title="No id", summary="", published=None),
        ParsedEntry(guid="a", url="", title="Good news again", summary="", published=None),
    ]

    counts = store_entries(source, entries, T10)

    assert counts == {"fetched": 3, "new": 1, "duplicate": 1, "skipped": 1}
    assert Article.objects.get().fetched_at == T10


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_fetches_of_one_source_store_each_article_once(feed_server, entities):
    # Both requests are held until both arrived, so both fetches see an empty table and try
    # to insert the same three guids.
    barrier = threading.Barrier(2, timeout=10)
    body = rss()

    def both_at_once(handler):
        barrier.wait()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/rss+xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    source = make_source(feed_server, handler=both_at_once)
    summaries, errors = [], []

    def fetch():
        try:
            summaries.append(fetch_source(source.pk))
        except Exception as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert Article.objects.count() == 3
    assert Article.entities.through.objects.count() == 4
    assert sum(s["new"] for s in summaries) == 3
    assert sum(s["duplicate"] for s in summaries) == 3


# --- aggregate_sentiment ------------------------------------------------------------------------


def stored_article(source, guid, sentiment, published, fetched_at, entity):
    article = Article.objects.create(
        source=source, guid=guid, sentiment=sentiment, published=published, fetched_at=fetched_at
    )
    article.entities.add(entity)


def point_periods() -> list[datetime]:
    return list(
        SentimentPoint.objects.order_by("period_start").values_list("period_start", flat=True)
    )


@pytest.mark.django_db
def test_aggregation_by_default_covers_this_and_the_last_hour_and_recent_fetches(entities):
    apple = entities["apple"]
    source = Source.objects.create(name="s", url="https://example.com/s.xml")
    now = T10 + timedelta(hours=5, minutes=2)  # 15:02
    stored_article(source, "this-hour", 0.1, now - timedelta(minutes=1), now, apple)
    stored_article(source, "last-hour", 0.2, T10 + timedelta(hours=4, minutes=50), now, apple)
    stored_article(source, "late", 0.3, T10, now - timedelta(minutes=30), apple)
    stored_article(source, "old", 0.4, T10 + HOUR, T10 + HOUR, apple)  # fetched long ago

    with time_machine.travel(now, tick=False):
        result = aggregate_sentiment()

    assert point_periods() == [T10, T10 + 4 * HOUR, T10 + 5 * HOUR]
    assert result == {
        "periods": 3,
        "first": T10.isoformat(),
        "last": (T10 + 5 * HOUR).isoformat(),
        "points": 3,
    }


@pytest.mark.django_db
def test_aggregation_of_a_given_period_covers_that_hour_only(entities):
    apple = entities["apple"]
    source = Source.objects.create(name="s", url="https://example.com/s.xml")
    stored_article(source, "in", -0.5, T10 + timedelta(minutes=40), T10 + HOUR, apple)
    stored_article(source, "after", 0.5, T10 + HOUR, T10 + HOUR, apple)

    result = aggregate_sentiment("2026-11-20T10:40:00")  # naive: UTC

    assert result["points"] == 1
    [point] = SentimentPoint.objects.all()
    assert (point.period_start, point.mean_sentiment, point.negative_count) == (T10, -0.5, 1)


@pytest.mark.django_db
def test_aggregation_refuses_a_period_that_is_not_iso_8601():
    with pytest.raises(ValueError, match="yesterday"):
        aggregate_sentiment("yesterday")


# --- poll tasks, through Redis and a real worker process ----------------------------------------


def finished(task_name: str, count: int) -> list[TaskExecution]:
    def done():
        rows = list(
            TaskExecution.objects.filter(task_name=task_name)
            .exclude(status=Status.STARTED)
            .order_by("finished_at")
        )
        return rows if len(rows) >= count else None

    return wait_for(done, timeout=60)


def drain(worker) -> None:
    """Return once the worker has run everything queued before this call on the default queue.

    The worker runs one task at a time, in queue order (concurrency 1, prefetch 1), so when a
    task sent now has finished, every task queued earlier (such as a chord callback) has too.
    """
    task_id = test_tasks.add.delay(1, 1).id
    wait_for(
        lambda: TaskExecution.objects.filter(task_id=task_id, status=Status.SUCCEEDED).exists(),
        timeout=60,
    )


@pytest.mark.integration
def test_poll_news_fans_out_one_fetch_per_enabled_news_source(worker, feed_server, entities):
    first = make_source(feed_server, "/a.xml")
    second = make_source(feed_server, "/b.xml")
    make_source(feed_server, "/off.xml", enabled=False)
    make_source(feed_server, "/stories.xml", kind=Kind.DISCUSSION)

    assert poll_news.delay().get(timeout=60) == {"sources": 2}

    rows = finished("pipeline.fetch_source", 2)
    assert sorted(row.args for row in rows) == sorted([f"[{first.pk}]", f"[{second.pk}]"])
    assert {row.status for row in rows} == {Status.SUCCEEDED}
    assert Article.objects.filter(source=first).count() == 3
    assert Article.objects.filter(source=second).count() == 3
    drain(worker)
    assert TaskExecution.objects.filter(task_name="pipeline.fetch_source").count() == 2


@pytest.mark.integration
def test_poll_stories_aggregates_after_all_fetches_succeed(worker, feed_server, entities):
    make_source(feed_server, "/a.xml", kind=Kind.DISCUSSION)
    make_source(feed_server, "/b.xml", kind=Kind.DISCUSSION)

    assert poll_stories.delay().get(timeout=60) == {"sources": 2}

    fetches = finished("pipeline.fetch_source", 2)
    [aggregation] = finished("pipeline.aggregate_sentiment", 1)
    assert aggregation.status == Status.SUCCEEDED
    assert aggregation.started_at >= max(row.finished_at for row in fetches)
    # The articles were published days ago (10:xx on T10); the default aggregation covers the
    # hours of articles fetched recently, so it finds them.
    apple = SentimentPoint.objects.get(entity=entities["apple"], period_start=T10)
    assert apple.article_count == 4  # g1 and g3 from each of the two sources
    drain(worker)
    assert TaskExecution.objects.filter(task_name="pipeline.aggregate_sentiment").count() == 1


@pytest.mark.integration
def test_poll_stories_still_aggregates_when_a_fetch_fails(worker, feed_server, entities):
    make_source(feed_server, "/a.xml", kind=Kind.DISCUSSION)
    broken = make_source(feed_server, "/gone.xml", kind=Kind.DISCUSSION, status=404)

    assert poll_stories.delay().get(timeout=60) == {"sources": 2}

    fetches = finished("pipeline.fetch_source", 2)
    [failed] = [row for row in fetches if row.status == Status.FAILED]
    assert failed.args == f"[{broken.pk}]"
    assert failed.error_type == "FetchError"
    assert "404" in failed.error_message
    [aggregation] = finished("pipeline.aggregate_sentiment", 1)
    assert aggregation.status == Status.SUCCEEDED
    assert aggregation.started_at >= max(row.finished_at for row in fetches)
    assert SentimentPoint.objects.get(entity=entities["apple"]).article_count == 2
    drain(worker)
    assert TaskExecution.objects.filter(task_name="pipeline.aggregate_sentiment").count() == 1
    broken.refresh_from_db()
    assert (broken.last_outcome, broken.consecutive_failures) == ("http_404", 1)


@pytest.mark.integration
def test_poll_stories_without_discussion_sources_aggregates_directly(worker, feed_server):
    make_source(feed_server, "/news.xml", kind=Kind.NEWS)

    assert poll_stories.delay().get(timeout=60) == {"sources": 0}

    [aggregation] = finished("pipeline.aggregate_sentiment", 1)
    assert aggregation.status == Status.SUCCEEDED
    assert feed_server.requests == []


# --- fetches on their own queue, as deployed: a threads-pool worker beside a prefork one --------


@pytest.fixture
def deployed_workers(start_worker):
    """The deployment's two workers (README, Performance): prefork on the default queue, threads
    on the fetch queue."""
    start_worker("w1", "--concurrency=1", queues="celery")
    start_worker("f1", "--pool=threads", "--concurrency=4", queues="fetch")


def placement(row: TaskExecution) -> tuple[str, str]:
    """Which worker (its name before the @) took the task, from which queue."""
    return row.worker.partition("@")[0], row.queue


@pytest.mark.integration
def test_threads_pool_worker_on_the_fetch_queue_runs_fetches_and_audits_them(
    deployed_workers, feed_server, entities
):
    make_source(feed_server, "/a.xml")
    make_source(feed_server, "/b.xml")
    broken = make_source(feed_server, "/gone.xml", status=404)

    assert poll_news.delay().get(timeout=60) == {"sources": 3}

    rows = finished("pipeline.fetch_source", 3)
    assert {placement(row) for row in rows} == {("f1", "fetch")}
    assert all(row.finished_at >= row.started_at and row.duration is not None for row in rows)
    [failed] = [row for row in rows if row.status == Status.FAILED]
    assert (failed.args, failed.error_type) == (f"[{broken.pk}]", "FetchError")
    assert "404" in failed.error_message
    assert "Traceback" in failed.traceback
    succeeded = [row for row in rows if row.status == Status.SUCCEEDED]
    assert sorted(row.result["new"] for row in succeeded) == [3, 3]
    [poll] = finished("pipeline.poll_news", 1)
    assert placement(poll) == ("w1", "celery")


@pytest.mark.integration
@pytest.mark.parametrize("broken", [False, True], ids=["all-succeed", "one-fails"])
def test_poll_stories_aggregates_after_fetches_on_the_fetch_queue(
    deployed_workers, feed_server, entities, broken
):
    make_source(feed_server, "/a.xml", kind=Kind.DISCUSSION)
    make_source(feed_server, "/b.xml", kind=Kind.DISCUSSION, status=404 if broken else 200)

    assert poll_stories.delay().get(timeout=60) == {"sources": 2}

    fetches = finished("pipeline.fetch_source", 2)
    assert {placement(row) for row in fetches} == {("f1", "fetch")}
    [aggregation] = finished("pipeline.aggregate_sentiment", 1)
    assert (aggregation.status, placement(aggregation)) == (Status.SUCCEEDED, ("w1", "celery"))
    # The chord sends the aggregation when the last fetch's result is stored, which is before
    # that fetch's audit row is finished: the other worker may start it a few ms earlier than the
    # row's finished_at. That it counted every article shows it ran after the fetches' work.
    apple = SentimentPoint.objects.get(entity=entities["apple"], period_start=T10)
    assert apple.article_count == (2 if broken else 4)
