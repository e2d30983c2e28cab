from datetime import UTC, datetime, timedelta

import pytest

from pipeline.models import Article, Source
from pipeline.status import source_health

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_source_panel_lists_failing_sources_first_with_articles_per_day(settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True
    ok = Source.objects.create(name="Good feed", url="http://127.0.0.1:9/good.xml", kind="news")
    bad = Source.objects.create(name="Broken feed", url="http://127.0.0.1:9/bad.xml", kind="news")
    bad.record_failure("http_404", "feed http://127.0.0.1:9/bad.xml returned 404")
    for i in range(14):
        Article.objects.create(
            source=ok, guid=f"g{i}", title="t", sentiment=0, fetched_at=NOW - timedelta(days=1)
        )
    Article.objects.create(
        source=ok, guid="old", title="old", sentiment=0, fetched_at=NOW - timedelta(days=9)
    )

    title, columns, rows = source_health(NOW)

    assert title == "Sources"
    assert [row[0] for row in rows] == ["Broken feed", "Good feed"]
    broken, good = (dict(zip(columns, row, strict=True)) for row in rows)
    assert (broken["last outcome"], broken["failures in a row"]) == ("http_404", 1)
    assert good["articles per day (7 days)"] == 2.0


def test_status_page_shows_the_source_panel(admin_client, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True
    Source.objects.create(name="<b>Feed & Co</b>", url="http://127.0.0.1:9/f.xml", kind="news")

    body = admin_client.get("/status/").content.decode()

    assert "Sources" in body
    assert "&lt;b&gt;Feed &amp; Co&lt;/b&gt;" in body
