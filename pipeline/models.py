"""The pipeline's data: feed sources, tracked entities, articles and per-entity sentiment points.

The bulk writes live here, next to the constraints they rely on: `Article.objects.store_new()`
inserts a feed's entries once per (source, guid), `SentimentPoint.objects.aggregate()` upserts
one row per (entity, period_start, period_length). Both are safe to repeat and to run twice at
the same time, which at-least-once delivery requires.
"""

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Avg, Count, F, Max, Min, Q
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from . import fetch, parse
from .entities import Matcher
from .sentiment import NEGATIVE_THRESHOLD, POSITIVE_THRESHOLD

HOUR = timedelta(hours=1)


def validate_feed_url(url: str) -> None:
    """Refuse a feed URL that fetching would refuse: not http/https, or a host that resolves to
    a loopback, private, link-local or other non-public address (fetch.check_url).

    A name that does not resolve now is accepted: DNS may be down, or the feed not live yet, and
    every fetch checks the address again, on every redirect hop and on the connected socket.
    """
    try:
        fetch.check_url(url)
    except fetch.FetchError as error:
        if error.reason != "dns_error":
            raise ValidationError(str(error), code=error.reason) from error


class Kind(models.TextChoices):
    NEWS = "news"
    DISCUSSION = "discussion"


class Source(models.Model):
    """A feed to poll, with what its last fetch left behind (outcome, validators, failures)."""

    name = models.CharField(max_length=200)
    url = models.URLField(max_length=1000, unique=True, validators=[validate_feed_url])
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.NEWS)
    enabled = models.BooleanField(default=True)
    # HTTP validators from the last 200 response, sent back for a conditional GET.
    etag = models.CharField(max_length=500, blank=True, default="")
    last_modified = models.CharField(max_length=100, blank=True, default="")
    last_fetched_at = models.DateTimeField(null=True, blank=True)
    # "ok", "not_modified", or the reason of a FetchError/ParseError: "http_404", "parse_error: …".
    last_outcome = models.CharField(max_length=200, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    consecutive_failures = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    # No extra indexes: a deployment has tens of sources, and `url` is already unique.
    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The admin form runs the field's validators; this also covers seed_demo, the shell and
        # scripts, which save without validating. Raises ValidationError.
        validate_feed_url(self.url)
        super().save(*args, **kwargs)

    def record_success(
        self, outcome: str, *, etag: str | None, last_modified: str | None, problem: str = ""
    ) -> None:
        """Store a fetch that worked. `etag`/`last_modified` None keeps the stored validator
        (a 304 need not repeat them); a 200 without them passes "" to clear them."""
        fields = {
            "last_fetched_at": timezone.now(),
            "last_outcome": outcome[:200],
            "last_error": problem,
            "consecutive_failures": 0,
            "updated": timezone.now(),
        }
        if etag is not None:
            fields["etag"] = etag[:500]
        if last_modified is not None:
            fields["last_modified"] = last_modified[:100]
        # One UPDATE of named fields: a concurrent admin edit of name/enabled is not overwritten.
        Source.objects.filter(pk=self.pk).update(**fields)

    def record_failure(self, outcome: str, error: str) -> None:
        # F() so that two failing fetches running at once both count.
        Source.objects.filter(pk=self.pk).update(
            last_fetched_at=timezone.now(),
            last_outcome=outcome[:200],
            last_error=error,
            consecutive_failures=F("consecutive_failures") + 1,
            updated=timezone.now(),
        )


def validate_aliases(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValidationError('Aliases must be a JSON list of strings, e.g. ["UK", "Britain"].')


@dataclass
class _BuiltMatcher:
    matcher: Matcher
    fingerprint: tuple[Any, ...]  # of the entity table when it was built
    built: float  # time.monotonic()
    checked: float  # when the fingerprint was last found unchanged


class EntityManager(models.Manager):
    # How long a process trusts its matcher before asking whether the entities changed.
    MATCHER_CHECK_EVERY = 5.0
    # A backstop for changes the fingerprint cannot see (a queryset .update() or raw SQL, which
    # leave `updated` as it was): a process rebuilds its matcher at least this often.
    MATCHER_MAX_AGE = 600.0

    _cached: _BuiltMatcher | None = None
    _build_lock = threading.Lock()

    def matcher(self) -> Matcher:
        """A Matcher over every entity's names, shared by the fetches of this process.

        Building one costs ~30 ms at 5,000 entities (the query, normalising 10,000 names, the
        automaton), 60 times the matching of a 50-entry feed: built per fetch, matching grew
        linearly with the entity count (bench/RESULTS.md, target 3). Instead a process keeps
        its matcher and, at most every MATCHER_CHECK_EVERY seconds, asks for a fingerprint of
        the table (its count and latest `updated`: ~0.5 ms at 5,000 entities, a cost that does
        grow with them, so not per fetch: a poll's fetches come by the hundred within seconds).
        It rebuilds when the fingerprint changed: an entity added, edited or deleted is matched
        by the fetches that start 5 s later, in every worker.
        """
        now = time.monotonic()
        cached = EntityManager._cached
        if cached is not None and now - cached.built < self.MATCHER_MAX_AGE:
            if now - cached.checked < self.MATCHER_CHECK_EVERY:
                return cached.matcher
            fingerprint = self._fingerprint()
            if fingerprint == cached.fingerprint:
                cached.checked = now
                return cached.matcher
        # One build at a time: the threads of a threads-pool worker share the matcher.
        with self._build_lock:
            if EntityManager._cached is not cached:  # another thread built it meanwhile
                return EntityManager._cached.matcher
            fingerprint = self._fingerprint()
            matcher = Matcher(
                (entity_id, [name, *aliases])
                for entity_id, name, aliases in self.values_list("id", "name", "aliases")
            )
            now = time.monotonic()
            EntityManager._cached = _BuiltMatcher(matcher, fingerprint, built=now, checked=now)
            return matcher

    def _fingerprint(self) -> tuple[Any, ...]:
        return tuple(self.aggregate(count=Count("id"), changed=Max("updated")).values())


class Entity(models.Model):
    """A thing whose sentiment is tracked: matched by its name or any alias (see entities.py)."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True)
    aliases = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_aliases],
        help_text='Other names, as a JSON list: ["UK", "Britain"]. Matching ignores case.',
    )
    # Indexed for the matcher cache's fingerprint (EntityManager.matcher).
    updated = models.DateTimeField(auto_now=True, db_index=True)

    objects = EntityManager()

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "entities"

    def __str__(self) -> str:
        return self.name

    def names(self) -> list[str]:
        return [self.name, *self.aliases]


class ArticleManager(models.Manager):
    def periods_fetched_since(self, since: datetime) -> list[datetime]:
        """The hours (see SentimentPoint) of the articles fetched at or after `since`."""
        return list(
            self.filter(fetched_at__gte=since)
            .annotate(period=TruncHour(Coalesce("published", "fetched_at"), tzinfo=UTC))
            .values_list("period", flat=True)
            .distinct()
            .order_by("period")
        )

    def store_new(self, source: Source, articles: list["Article"]) -> list["Article"]:
        """Insert the articles, each with `matched` (a set of entity ids) and one `fetched_at`
        shared by the batch, and attach their entities. Returns the rows this call inserted.

        The caller leaves out guids it knows are stored. A guid stored anyway, by a fetch of
        the same source running at the same moment, is left alone: the unique constraint on
        (source, guid) decides and ON CONFLICT DO NOTHING skips it, so exactly one of two
        racing fetches inserts each row and attaches its entities.
        """
        fresh = sorted(articles, key=lambda a: a.guid)
        if not fresh:
            return []
        fetched_at = fresh[0].fetched_at
        # One transaction: a crash between the two inserts must not leave articles that a
        # redelivered fetch sees as "already stored" but that have no entities attached.
        # Sorted by guid so that two fetches of one feed lock the same keys in the same order
        # and cannot deadlock.
        with transaction.atomic():
            self.bulk_create(fresh, ignore_conflicts=True)
            # ignore_conflicts returns no ids. The rows this call inserted are the ones with
            # its own fetched_at; a racing fetch's rows carry another timestamp.
            ids = dict(
                self.filter(
                    source=source, guid__in=[a.guid for a in fresh], fetched_at=fetched_at
                ).values_list("guid", "id")
            )
            inserted = [a for a in fresh if a.guid in ids]
            for article in inserted:
                article.pk = ids[article.guid]
            links = [
                Article.entities.through(article_id=article.pk, entity_id=entity_id)
                for article in inserted
                for entity_id in sorted(article.matched)
            ]
            Article.entities.through.objects.bulk_create(links)
        return inserted


class Article(models.Model):
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="articles")
    # parse.py cuts entries to these lengths (a guid too long becomes its hash).
    guid = models.CharField(max_length=parse.GUID_MAX)
    url = models.URLField(max_length=parse.URL_MAX, blank=True, default="")
    title = models.CharField(max_length=parse.TITLE_MAX, blank=True, default="")
    summary = models.TextField(blank=True, default="")
    published = models.DateTimeField(null=True, blank=True)
    fetched_at = models.DateTimeField()
    # VADER compound score of title and summary, -1 (negative) to 1 (positive).
    sentiment = models.FloatField()
    entities = models.ManyToManyField(Entity, blank=True, related_name="articles")

    objects = ArticleManager()

    class Meta:
        ordering = ["-fetched_at", "-id"]
        constraints = [
            # Deduplication, and the lookup of stored guids (tasks.store_entries, store_new).
            models.UniqueConstraint(fields=["source", "guid"], name="article_source_guid_uniq"),
        ]
        indexes = [
            # Admin list, newest first, and aggregation's "articles fetched since".
            models.Index(fields=["-fetched_at"], name="article_fetched_idx"),
            # Admin list filtered by source.
            models.Index(fields=["source", "-fetched_at"], name="article_source_fetched_idx"),
            # Aggregation: the articles of one hour, by publication time or else fetch time.
            models.Index(Coalesce("published", "fetched_at"), name="article_period_idx"),
        ]

    def __str__(self) -> str:
        return self.title or self.guid

    def text(self) -> str:
        """What matching and scoring read: the title, then the summary."""
        return f"{self.title}\n{self.summary}" if self.summary else self.title


def hour_start(moment: datetime) -> datetime:
    """The start of the UTC hour containing `moment` (aware).

    Periods are UTC hours so that they never overlap or repeat at DST changes and are whole
    hours in zones with half-hour offsets.
    """
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class SentimentPointManager(models.Manager):
    def aggregate(self, period_starts: Iterable[datetime], now: datetime | None = None) -> int:
        """Recompute the one-hour points of the given periods from the stored articles.

        An article belongs to the hour of its `published` time, or of `fetched_at` when the
        feed gave none. Upserts one row per entity and period and deletes the rows of those
        periods whose entity no longer has articles, so running it again gives the same rows.
        Returns the number of rows written.
        """
        starts = sorted({hour_start(s) for s in period_starts})
        if not starts:
            return 0
        now = now or timezone.now()
        positive = Q(article__sentiment__gte=POSITIVE_THRESHOLD)
        negative = Q(article__sentiment__lte=NEGATIVE_THRESHOLD)
        rows = (
            Article.entities.through.objects.annotate(
                at=Coalesce("article__published", "article__fetched_at")
            )
            # The range lets the article_period_idx index narrow the scan; the hour filter
            # drops the hours in between that were not asked for.
            .filter(at__gte=starts[0], at__lt=starts[-1] + HOUR)
            .annotate(period=TruncHour("at", tzinfo=UTC))
            .filter(period__in=starts)
            .values("entity_id", "period")
            .annotate(
                article_count=Count("article_id"),
                mean_sentiment=Avg("article__sentiment"),
                min_sentiment=Min("article__sentiment"),
                max_sentiment=Max("article__sentiment"),
                positive_count=Count("article_id", filter=positive),
                negative_count=Count("article_id", filter=negative),
                neutral_count=Count("article_id", filter=~positive & ~negative),
            )
        )
        points = [
            SentimentPoint(
                entity_id=row["entity_id"],
                period_start=row["period"],
                period_length=HOUR,
                article_count=row["article_count"],
                mean_sentiment=row["mean_sentiment"],
                min_sentiment=row["min_sentiment"],
                max_sentiment=row["max_sentiment"],
                positive_count=row["positive_count"],
                negative_count=row["negative_count"],
                neutral_count=row["neutral_count"],
                computed_at=now,
            )
            for row in rows
        ]
        with transaction.atomic():
            self.bulk_create(
                points,
                update_conflicts=True,
                unique_fields=["entity", "period_start", "period_length"],
                update_fields=[*STATISTICS, "computed_at"],
            )
            kept = {(p.entity_id, p.period_start) for p in points}
            stored = self.filter(period_start__in=starts, period_length=HOUR).values_list(
                "id", "entity_id", "period_start"
            )
            stale = [pk for pk, entity_id, start in stored if (entity_id, start) not in kept]
            if stale:
                self.filter(pk__in=stale).delete()
        return len(points)


# What an aggregation computes for each entity and period (SentimentPoint's fields).
STATISTICS = (
    "article_count",
    "mean_sentiment",
    "min_sentiment",
    "max_sentiment",
    "positive_count",
    "negative_count",
    "neutral_count",
)


class SentimentPoint(models.Model):
    """Sentiment about one entity over one period: counts and statistics of VADER scores."""

    entity = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="sentiment_points")
    period_start = models.DateTimeField()
    period_length = models.DurationField(default=HOUR)
    article_count = models.PositiveIntegerField()
    mean_sentiment = models.FloatField()
    min_sentiment = models.FloatField()
    max_sentiment = models.FloatField()
    positive_count = models.PositiveIntegerField()
    negative_count = models.PositiveIntegerField()
    neutral_count = models.PositiveIntegerField()
    computed_at = models.DateTimeField()

    objects = SentimentPointManager()

    class Meta:
        ordering = ["-period_start", "entity_id"]
        constraints = [
            # The upsert key; also serves one entity's series in time order.
            models.UniqueConstraint(
                fields=["entity", "period_start", "period_length"], name="sentiment_point_uniq"
            ),
        ]
        indexes = [
            # Admin list newest first and its date filter; aggregation's stale-row delete.
            models.Index(fields=["-period_start"], name="sentiment_period_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.entity} {self.period_start:%Y-%m-%d %H:%M} ({self.article_count})"
