import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from pipeline.entities import Matcher
from pipeline.models import Article, Entity, Kind, Source
from pipeline.parse import parse_feed
from pipeline.sentiment import classify, score_text
from pipeline.tasks import fetch_source

pytestmark = pytest.mark.django_db

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
SOURCES = json.loads((PIPELINE / "fixtures" / "sources.json").read_text())
ENTITIES = json.loads((PIPELINE / "fixtures" / "entities.json").read_text())
SAMPLES = sorted((PIPELINE / "samples").glob("*.xml"))


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_seed_creates_the_public_feeds_and_the_starter_entities():
    output = seed()

    assert Source.objects.filter(kind=Kind.NEWS, enabled=True).count() == 6
    assert Source.objects.filter(kind=Kind.DISCUSSION, enabled=True).count() == 4
    assert Source.objects.get(url="https://hnrss.org/frontpage").kind == Kind.DISCUSSION
    assert Entity.objects.count() == len(ENTITIES) == 50
    assert Entity.objects.get(slug="united-kingdom").aliases == [
        "UK",
        "U.K.",
        "Britain",
        "Great Britain",
    ]
    assert output == "sources: 10 created, 0 kept\nentities: 50 created, 0 kept\n"


def test_seeding_again_keeps_what_an_operator_changed():
    seed()
    Source.objects.filter(url="https://hnrss.org/frontpage").update(name="HN", enabled=False)
    Entity.objects.filter(slug="apple").update(aliases=["AAPL"])

    output = seed()

    hn = Source.objects.get(url="https://hnrss.org/frontpage")
    assert (hn.name, hn.enabled) == ("HN", False)
    assert Entity.objects.get(slug="apple").aliases == ["AAPL"]
    assert Source.objects.count() == 10
    assert output == "sources: 0 created, 10 kept\nentities: 0 created, 50 kept\n"


def test_sample_base_url_registers_each_bundled_sample_by_its_name(settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True
    seed("--sample-base-url", "http://127.0.0.1:8001")

    samples = Source.objects.filter(url__startswith="http://127.0.0.1:8001/").order_by("url")
    assert [(s.url, s.kind, s.enabled) for s in samples] == [
        ("http://127.0.0.1:8001/discussion-tech.xml", Kind.DISCUSSION, True),
        ("http://127.0.0.1:8001/discussion-world.xml", Kind.DISCUSSION, True),
        ("http://127.0.0.1:8001/news-business.xml", Kind.NEWS, True),
        ("http://127.0.0.1:8001/news-world.xml", Kind.NEWS, True),
    ]
    assert samples[0].name == "Sample: discussion-tech"


def test_sample_base_url_must_be_http():
    with pytest.raises(CommandError, match="ftp://x/"):
        seed("--sample-base-url", "ftp://x/")


def test_seed_feeds_are_distinct_http_urls():
    urls = [source["url"] for source in SOURCES]
    assert len(set(urls)) == len(urls)
    assert all(url.startswith("https://") for url in urls)


def test_starter_entities_have_unique_slugs_and_list_aliases():
    assert len({e["slug"] for e in ENTITIES}) == len(ENTITIES)
    for entity in ENTITIES:
        assert isinstance(entity["aliases"], list), entity["slug"]


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_each_sample_parses_and_mentions_seeded_entities_with_both_moods(path):
    feed = parse_feed(path.read_bytes(), url=f"http://127.0.0.1:8001/{path.name}")
    matcher = Matcher((i, [e["name"], *e["aliases"]]) for i, e in enumerate(ENTITIES))

    labels = {classify(score_text(f"{e.title}\n{e.summary}")) for e in feed.entries}
    mentioning = [e for e in feed.entries if matcher.match(f"{e.title}\n{e.summary}")]
    assert 10 <= len(feed.entries) <= 20
    assert feed.problem is None
    assert all(e.published is not None for e in feed.entries)
    assert {"positive", "negative"} <= labels
    assert len(mentioning) >= len(feed.entries) // 2


def test_seeded_sample_source_is_fetched_and_matched(feed_server):
    sample = PIPELINE / "samples" / "news-business.xml"
    feed_server.route("/news-business.xml", body=sample.read_bytes())
    seed("--sample-base-url", feed_server.url("/"))
    source = Source.objects.get(url=feed_server.url("/news-business.xml"))

    summary = fetch_source(source.pk)

    assert (summary["outcome"], summary["new"]) == ("ok", 12)
    pineapple = Article.objects.get(title="Pineapple prices rise in Costa Rica")
    assert list(pineapple.entities.all()) == []
    apple = Article.objects.get(title__startswith="Apple shares jump")
    assert list(apple.entities.values_list("slug", flat=True)) == ["apple"]
    assert apple.sentiment > 0.05
