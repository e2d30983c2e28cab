"""A hostile feed, fetched and stored the way the worker does it (pipeline.tasks.fetch_source),
then shown to staff: what it stored is plain text, and every page escapes it."""

import contextlib

import pytest
from django.urls import NoReverseMatch, reverse

from pipeline.models import Article, Source
from pipeline.tasks import fetch_source

pytestmark = pytest.mark.django_db

HOSTILE = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title><![CDATA[<script>alert('feed')</script>]]></title>
<item>
  <title><![CDATA[<script>alert(1)</script>Markup in a title]]></title>
  <description><![CDATA[<img src=x onerror="alert(2)">An image that runs code]]></description>
  <link>javascript:alert(3)</link>
  <guid>hostile-1</guid>
</item>
<item>
  <title>&amp;lt;script&amp;gt;alert(4)&amp;lt;/script&amp;gt; escaped twice</title>
  <description>&amp;lt;img src=x onerror=alert(5)&amp;gt; escaped twice</description>
  <link>https://example.com/a"&gt;&lt;script&gt;alert(6)&lt;/script&gt;</link>
  <guid>hostile-2</guid>
</item>
<item>
  <title>A link that hides its scheme</title>
  <link> JaVaScRiPt:alert(7)</link>
  <guid>hostile-3</guid>
</item>
</channel></rss>"""


@pytest.fixture
def hostile_source(feed_server):
    feed_server.route("/feed.xml", body=HOSTILE, headers={"Content-Type": "application/rss+xml"})
    source = Source.objects.create(name="Hostile", url=feed_server.url("/feed.xml"))
    assert fetch_source(source.pk)["new"] == 3
    return source


def pages(source: Source) -> list[str]:
    urls = ["/admin/pipeline/article/", "/admin/pipeline/source/"]
    urls.append(f"/admin/pipeline/source/{source.pk}/change/")
    for pk in Article.objects.values_list("pk", flat=True):
        urls.append(f"/admin/pipeline/article/{pk}/change/")
    with contextlib.suppress(NoReverseMatch):  # a checkout without the status page
        urls.append(reverse("status"))
    return urls


def test_stored_text_is_plain_and_script_links_are_dropped(hostile_source):
    stored = {a.guid: (a.title, a.summary, a.url) for a in Article.objects.all()}

    assert stored["hostile-1"] == ("alert(1)Markup in a title", "An image that runs code", "")
    # Markup escaped twice is text that shows markup: stored as that text, escaped when shown.
    assert stored["hostile-2"] == (
        "<script>alert(4)</script> escaped twice",
        "<img src=x onerror=alert(5)> escaped twice",
        "https://example.com/a%22%3E%3Cscript%3Ealert(6)%3C/script%3E",
    )
    assert stored["hostile-3"][2] == ""


def test_admin_and_status_pages_escape_everything_from_the_feed(hostile_source, admin_client):
    for url in pages(hostile_source):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()

        assert "<script>alert" not in html, url
        assert "<img src=x onerror" not in html, url
        assert "javascript:" not in html.lower(), url
    # The hostile text was on the pages, escaped.
    listing = admin_client.get("/admin/pipeline/article/").content.decode()
    assert "alert(1)Markup in a title" in listing
    assert "&lt;script&gt;alert(4)&lt;/script&gt; escaped twice" in listing
    twice = Article.objects.get(guid="hostile-2")
    detail = admin_client.get(f"/admin/pipeline/article/{twice.pk}/change/").content.decode()
    assert "&lt;img src=x onerror=alert(5)&gt; escaped twice" in detail
