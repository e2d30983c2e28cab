"""The pipeline's Celery tasks: thin wrappers around fetch.py, parse.py, entities.py,
sentiment.py and the bulk writes in models.py.

The task names are an interface: beat's schedule, the admin and operators refer to them.
Every task is idempotent, because delivery is at-least-once (acks_late): a redelivered fetch
stores nothing twice, a repeated aggregation writes the same rows.
"""

import logging
from datetime import UTC, datetime
from typing import Any

from celery import chord, group, shared_task
from django.utils import timezone

from .fetch import FetchError, fetch_feed
from .models import HOUR, Article, Entity, Kind, SentimentPoint, Source, hour_start
from .parse import ParsedEntry, ParseError, parse_feed
from .sentiment import score_text

logger = logging.getLogger(__name__)


@shared_task(name="pipeline.poll_news")
def poll_news() -> dict[str, int]:
    """Fan out one fetch_source per enabled news source, so a slow or broken source cannot
    hold back the others and the fetches spread over all workers."""
    source_ids = enabled_source_ids(Kind.NEWS)
    if source_ids:
        group(fetch_source.si(source_id) for source_id in source_ids).apply_async()
    logger.info("event=poll kind=news sources=%d", len(source_ids))
    return {"sources": len(source_ids)}


@shared_task(name="pipeline.poll_stories")
def poll_stories() -> dict[str, int]:
    """Fetch every enabled discussion source, then aggregate sentiment once they are done.

    A chord runs its body only when every header task succeeded; when one fails, Celery marks
    the body failed (ChordError) without running it and calls the body's error callbacks
    instead, once, after the last header task finished. Public feeds fail often enough that
    this is the normal case, so the aggregation is also the body's error callback: it runs
    after the fetches either way (a real worker checks both paths in tests/pipeline/
    test_tasks.py). Aggregation is idempotent, so the rare second run, when the body itself
    fails and its error callback runs it again, does no harm.
    """
    source_ids = enabled_source_ids(Kind.DISCUSSION)
    if not source_ids:
        aggregate_sentiment.delay()
    else:
        body = aggregate_sentiment.si()
        body.on_error(aggregate_sentiment.si())
        chord((fetch_source.si(source_id) for source_id in source_ids), body).apply_async()
    logger.info("event=poll kind=discussion sources=%d", len(source_ids))
    return {"sources": len(source_ids)}


@shared_task(name="pipeline.fetch_source")
def fetch_source(source_id: int) -> dict[str, Any]:
    """Fetch, parse and store one source's new entries; record the outcome on the Source.

    A conditional GET sends the stored ETag/Last-Modified; a 304 stores nothing. A missing or
    disabled source is skipped. On FetchError or ParseError the failure is recorded on the
    Source and the error re-raised, so that the task's audit row shows it failed. Transient
    HTTP errors were already retried inside fetch_feed; retrying the task would only repeat
    that, so there is no autoretry here.
    """
    source = Source.objects.filter(pk=source_id).first()
    if source is None or not source.enabled:
        problem = "source does not exist" if source is None else "source is disabled"
        logger.info("event=fetch_source source=%s outcome=skipped problem=%s", source_id, problem)
        return fetch_summary(source_id, "skipped", problem=problem)
    try:
        result = fetch_feed(
            source.url, etag=source.etag or None, last_modified=source.last_modified or None
        )
        if result.not_modified:
            source.record_success(
                "not_modified", etag=result.etag, last_modified=result.last_modified
            )
            logger.info("event=fetch_source source=%s outcome=not_modified", source_id)
            return fetch_summary(source_id, "not_modified")
        feed = parse_feed(result.content, content_type=result.content_type, url=result.url)
    except (FetchError, ParseError) as error:
        source.record_failure(error.reason, str(error))
        logger.warning(
            "event=fetch_source source=%s outcome=failed reason=%s error=%s",
            source_id,
            error.reason,
            error,
        )
        raise
    counts = store_entries(source, feed.entries, timezone.now())
    # A 200 without validators clears the stored ones: sending stale ones back is pointless.
    source.record_success(
        "ok",
        etag=result.etag or "",
        last_modified=result.last_modified or "",
        problem=feed.problem or "",
    )
    logger.info(
        "event=fetch_source source=%s outcome=ok fetched=%d new=%d duplicate=%d skipped=%d",
        source_id,
        counts["fetched"],
        counts["new"],
        counts["duplicate"],
        counts["skipped"],
    )
    return fetch_summary(source_id, "ok", problem=feed.problem, **counts)


# At most one parameter: Celery calls an error callback whose task takes more than one argument
# in-process as errback(request, exc, traceback) instead of sending it as a task
# (celery.backends.base.Backend._call_task_errbacks), and poll_stories uses this task as one.
@shared_task(name="pipeline.aggregate_sentiment")
def aggregate_sentiment(period_start: str | None = None) -> dict[str, Any]:
    """Recompute the hourly SentimentPoints of one hour, or of the recent hours by default.

    `period_start` is an ISO 8601 time (naive means UTC); the hour containing it is aggregated.
    By default: the current and the previous hour (so a run at the start of an hour completes
    the previous one), and the hours of every article fetched since the previous hour began,
    since feeds deliver entries published hours or days ago that would otherwise never be
    counted. Raises ValueError for a `period_start` that is not ISO 8601.
    """
    now = timezone.now()
    if period_start:
        starts = [hour_start(parse_iso(period_start))]
    else:
        current = hour_start(now)
        starts = sorted(
            {current, current - HOUR, *Article.objects.periods_fetched_since(current - HOUR)}
        )
    points = SentimentPoint.objects.aggregate(starts, now)
    logger.info(
        "event=aggregate_sentiment periods=%d first=%s last=%s points=%d",
        len(starts),
        starts[0].isoformat(),
        starts[-1].isoformat(),
        points,
    )
    return {
        "periods": len(starts),
        "first": starts[0].isoformat(),
        "last": starts[-1].isoformat(),
        "points": points,
    }


def enabled_source_ids(kind: str) -> list[int]:
    return list(
        Source.objects.filter(kind=kind, enabled=True).order_by("id").values_list("id", flat=True)
    )


def store_entries(
    source: Source, entries: list[ParsedEntry], fetched_at: datetime
) -> dict[str, int]:
    """Normalise, deduplicate, match and score a feed's entries and store the new ones.

    Returns counts: `fetched` entries in the feed, `new` rows stored, `duplicate` entries
    already stored (or repeated within the feed), `skipped` entries without a guid.
    """
    articles: dict[str, Article] = {}
    skipped = repeated = 0
    for entry in entries:
        # parse.py has cleaned the text and cut it to the columns' lengths.
        if not entry.guid:
            skipped += 1
        elif entry.guid in articles:
            repeated += 1
        else:
            articles[entry.guid] = Article(
                source=source,
                guid=entry.guid,
                url=entry.url,
                title=entry.title,
                summary=entry.summary,
                published=entry.published,
                fetched_at=fetched_at,
            )
    existing = set(
        Article.objects.filter(source=source, guid__in=list(articles)).values_list(
            "guid", flat=True
        )
    )
    fresh = [a for guid, a in articles.items() if guid not in existing]
    if fresh:
        matcher = Entity.objects.matcher()
        for article in fresh:
            text = article.text()
            article.sentiment = score_text(text)
            article.matched = matcher.match(text)
    new = len(Article.objects.store_new(source, fresh))
    return {
        "fetched": len(entries),
        "new": new,
        "duplicate": len(articles) - new + repeated,
        "skipped": skipped,
    }


def fetch_summary(
    source_id: int,
    outcome: str,
    *,
    fetched: int = 0,
    new: int = 0,
    duplicate: int = 0,
    skipped: int = 0,
    problem: str | None = None,
) -> dict[str, Any]:
    return {
        "source": source_id,
        "outcome": outcome,
        "fetched": fetched,
        "new": new,
        "duplicate": duplicate,
        "skipped": skipped,
        "problem": problem,
    }


def parse_iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
