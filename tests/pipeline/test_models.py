from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from pipeline.models import HOUR, Article, Entity, Kind, SentimentPoint, Source, hour_start

pytestmark = pytest.mark.django_db

T10 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def source():
    return Source.objects.create(name="World", url="https://example.com/world.xml")


@pytest.fixture
def apple():
    return Entity.objects.create(name="Apple", slug="apple")


@pytest.fixture
def tesla():
    return Entity.objects.create(name="Tesla", slug="tesla")


def article(source, guid, sentiment, published, entities=(), fetched_at=None):
    a = Article.objects.create(
        source=source,
        guid=guid,
        title=guid,
        sentiment=sentiment,
        published=published,
        fetched_at=fetched_at or T10 + timedelta(days=1),
    )
    a.entities.set(entities)
    return a


def points():
    return list(
        SentimentPoint.objects.order_by("entity__slug", "period_start").values(
            "entity__slug",
            "period_start",
            "period_length",
            "article_count",
            "mean_sentiment",
            "min_sentiment",
            "max_sentiment",
            "positive_count",
            "negative_count",
            "neutral_count",
        )
    )


# --- Source -------------------------------------------------------------------------------------


def test_failures_count_up_and_a_success_resets_them(source):
    source.record_failure("http_503", "feed https://example.com/world.xml returned 503")
    source.record_failure("timeout", "feed https://example.com/world.xml timed out")
    source.refresh_from_db()
    assert (source.last_outcome, source.consecutive_failures) == ("timeout", 2)
    assert source.last_error == "feed https://example.com/world.xml timed out"

    source.record_success("ok", etag='"v2"', last_modified="")
    source.refresh_from_db()
    assert (source.last_outcome, source.consecutive_failures, source.last_error) == ("ok", 0, "")
    assert source.etag == '"v2"'
    assert source.last_fetched_at is not None


def test_not_modified_keeps_the_stored_validators(source):
    source.record_success("ok", etag='"v1"', last_modified="Wed, 18 Nov 2026 10:00:00 GMT")
    source.record_success("not_modified", etag=None, last_modified=None)
    source.refresh_from_db()
    assert source.last_outcome == "not_modified"
    assert (source.etag, source.last_modified) == ('"v1"', "Wed, 18 Nov 2026 10:00:00 GMT")


def test_recording_an_outcome_does_not_overwrite_an_admin_edit(source):
    Source.objects.filter(pk=source.pk).update(name="Renamed", enabled=False)
    source.record_success("ok", etag="", last_modified="")  # stale instance
    source.refresh_from_db()
    assert (source.name, source.enabled) == ("Renamed", False)


# --- Entity -------------------------------------------------------------------------------------


def test_aliases_must_be_a_list_of_strings():
    entity = Entity(name="United Kingdom", slug="uk", aliases="Britain")
    with pytest.raises(ValidationError):
        entity.full_clean()
    entity.aliases = ["Britain", "UK"]
    entity.full_clean()
    assert entity.names() == ["United Kingdom", "Britain", "UK"]


# --- Article ------------------------------------------------------------------------------------


def test_a_guid_is_stored_once_per_source(source):
    article(source, "g1", 0.0, T10)
    other = Source.objects.create(name="Other", url="https://example.com/other.xml")
    article(other, "g1", 0.0, T10)  # same guid, other source: fine
    with pytest.raises(IntegrityError):
        article(source, "g1", 0.0, T10)


def test_store_new_leaves_a_row_another_fetch_inserted_alone(source, apple, tesla):
    # Another fetch stored g1 a moment ago, with other entities; this batch still has g1 in it.
    earlier = article(source, "g1", 0.3, T10, [tesla], fetched_at=T10)
    batch_time = T10 + timedelta(minutes=1)
    batch = []
    for guid in ["g2", "g1"]:
        new = Article(source=source, guid=guid, sentiment=0.5, fetched_at=batch_time)
        new.matched = {apple.pk}
        batch.append(new)

    inserted = Article.objects.store_new(source, batch)

    assert [a.guid for a in inserted] == ["g2"]
    assert Article.objects.count() == 2
    assert list(Article.objects.get(guid="g2").entities.all()) == [apple]
    earlier.refresh_from_db()
    assert (earlier.sentiment, list(earlier.entities.all())) == (0.3, [tesla])


def test_periods_fetched_since_are_the_hours_of_publication_or_fetch(source):
    since = T10 + timedelta(days=1)
    article(source, "old-news", 0.0, T10 + timedelta(minutes=5), fetched_at=since)
    article(source, "undated", 0.0, None, fetched_at=since + timedelta(minutes=30))
    article(source, "fetched-before", 0.0, T10, fetched_at=since - timedelta(seconds=1))

    assert Article.objects.periods_fetched_since(since) == [T10, since]


# --- SentimentPoint -----------------------------------------------------------------------------


def test_hour_start_is_the_utc_hour():
    india = timezone(timedelta(hours=5, minutes=30))
    assert hour_start(datetime(2026, 11, 20, 16, 10, tzinfo=india)) == T10
    assert hour_start(T10 + timedelta(minutes=59, seconds=59)) == T10


def test_aggregation_computes_counts_and_statistics_per_entity_and_hour(source, apple, tesla):
    # Apple in the 10:00 hour: 0.8 and 0.05 positive (0.05 is on the threshold), -0.4 negative,
    # 0.0 neutral; the undated one counts by its fetch time. Mean (0.8 + 0.05 - 0.4 + 0) / 4.
    article(source, "a1", 0.8, T10 + timedelta(minutes=5), [apple])
    article(source, "a2", 0.05, T10 + timedelta(minutes=30), [apple, tesla])
    article(source, "a3", -0.4, T10, [apple])
    article(source, "a4", 0.0, None, [apple], fetched_at=T10 + timedelta(minutes=59))
    # Next hour, and an article without entities: not in the 10:00 points.
    article(source, "a5", -0.9, T10 + HOUR, [apple])
    article(source, "a6", 0.9, T10 + timedelta(minutes=1))

    written = SentimentPoint.objects.aggregate([T10])

    assert written == 2
    apple_point, tesla_point = points()
    assert apple_point == {
        "entity__slug": "apple",
        "period_start": T10,
        "period_length": HOUR,
        "article_count": 4,
        "mean_sentiment": pytest.approx(0.1125),
        "min_sentiment": -0.4,
        "max_sentiment": 0.8,
        "positive_count": 2,
        "negative_count": 1,
        "neutral_count": 1,
    }
    assert (tesla_point["article_count"], tesla_point["mean_sentiment"]) == (1, 0.05)
    assert (tesla_point["positive_count"], tesla_point["neutral_count"]) == (1, 0)


def test_aggregating_several_hours_at_once_keeps_them_apart(source, apple):
    article(source, "a1", 0.5, T10, [apple])
    article(source, "a2", -0.5, T10 + HOUR, [apple])
    article(source, "a3", 0.9, T10 + 2 * HOUR, [apple])

    SentimentPoint.objects.aggregate([T10, T10 + 2 * HOUR])

    assert [(p["period_start"], p["mean_sentiment"]) for p in points()] == [
        (T10, 0.5),
        (T10 + 2 * HOUR, 0.9),
    ]


def test_aggregating_twice_gives_the_same_rows(source, apple, tesla):
    article(source, "a1", 0.8, T10, [apple, tesla])
    article(source, "a2", -0.2, T10 + timedelta(minutes=20), [apple])

    SentimentPoint.objects.aggregate([T10])
    first = points()
    ids = list(SentimentPoint.objects.order_by("id").values_list("id", flat=True))
    SentimentPoint.objects.aggregate([T10])

    assert points() == first
    assert list(SentimentPoint.objects.order_by("id").values_list("id", flat=True)) == ids


def test_aggregation_updates_a_point_when_articles_arrive_late(source, apple):
    article(source, "a1", 0.8, T10, [apple])
    SentimentPoint.objects.aggregate([T10])
    article(source, "a2", -0.2, T10 + timedelta(minutes=20), [apple])

    SentimentPoint.objects.aggregate([T10])

    [point] = points()
    assert (point["article_count"], point["mean_sentiment"]) == (2, pytest.approx(0.3))


def test_aggregation_removes_a_point_whose_articles_are_gone(source, apple, tesla):
    article(source, "a1", 0.8, T10, [apple])
    gone = article(source, "a2", 0.1, T10, [tesla])
    other_hour = article(source, "a3", 0.1, T10 + HOUR, [tesla])
    SentimentPoint.objects.aggregate([T10, T10 + HOUR])
    gone.delete()
    other_hour.delete()

    SentimentPoint.objects.aggregate([T10])

    assert [(p["entity__slug"], p["period_start"]) for p in points()] == [
        ("apple", T10),
        ("tesla", T10 + HOUR),  # not asked for, so left alone
    ]


def test_a_sentiment_point_is_unique_per_entity_period_and_length(apple):
    fields = {
        "entity": apple,
        "period_start": T10,
        "article_count": 1,
        "mean_sentiment": 0.0,
        "min_sentiment": 0.0,
        "max_sentiment": 0.0,
        "positive_count": 0,
        "negative_count": 0,
        "neutral_count": 1,
        "computed_at": T10,
    }
    SentimentPoint.objects.create(**fields)
    SentimentPoint.objects.create(**fields, period_length=timedelta(days=1))
    with pytest.raises(IntegrityError):
        SentimentPoint.objects.create(**fields)


def test_source_kinds_are_news_and_discussion():
    assert sorted(Kind.values) == ["discussion", "news"]
