import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline import parse
from pipeline.fetch import fetch_feed
from pipeline.parse import ParsedFeed, ParseError, parse_feed

FEEDS = Path(__file__).parent / "feeds"


def fetch_and_parse(feed_server, body: bytes, content_type: str | None, path="/feed"):
    """Serve `body`, fetch it over HTTP and parse what came back, as the pipeline does."""
    headers = {"Content-Type": content_type} if content_type else {}
    feed_server.route(path, body=body, headers=headers)
    result = fetch_feed(feed_server.url(path))
    return parse_feed(result.content, content_type=result.content_type, url=result.url)


def parse_error(feed_server, body: bytes, content_type: str | None) -> ParseError:
    with pytest.raises(ParseError) as caught:
        fetch_and_parse(feed_server, body, content_type)
    return caught.value


def rss(items: str) -> bytes:
    channel = f"<channel><title>t</title>{items}</channel>"
    return f'<?xml version="1.0"?><rss version="2.0">{channel}</rss>'.encode()


def test_it_parses_an_rss_2_feed(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "rss2.xml").read_bytes(), "application/rss+xml")

    assert feed.title == "Example & Co News"
    assert feed.problem is None
    first = feed.entries[0]
    assert first.guid == "example-2026-0001"
    assert first.url == "https://news.example.com/markets-rally"
    assert first.published == datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
    assert [entry.title for entry in feed.entries] == [
        "Markets rally as rates hold",
        "Click me",
        "Story without a date",
    ]


def test_it_turns_an_html_summary_into_plain_text(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "rss2.xml").read_bytes(), "application/rss+xml")

    assert feed.entries[0].summary == "Shares rose on Monday & bonds fell."


def test_it_drops_links_that_are_not_http(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "rss2.xml").read_bytes(), "application/rss+xml")

    click_me = feed.entries[1]
    assert click_me.url == ""
    assert click_me.summary == "A link that must not survive."


def test_an_entry_without_a_date_has_none(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "rss2.xml").read_bytes(), "application/rss+xml")

    undated = feed.entries[2]
    assert undated.published is None
    assert undated.guid == "https://news.example.com/undated"  # no guid: the link stands in


def test_it_parses_an_atom_1_feed(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "atom.xml").read_bytes(), "application/atom+xml")

    one, two = feed.entries
    assert feed.title == "Example Atom Feed"
    assert (one.guid, one.title, one.summary) == (
        "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a",
        "Atom entry one",
        "First summary.",
    )
    assert one.published == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # updated, +02:00
    assert two.published == datetime(2026, 11, 22, 8, 15, tzinfo=UTC)  # published wins


def test_it_takes_the_summary_from_atom_content_when_there_is_no_summary(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "atom.xml").read_bytes(), "application/atom+xml")

    assert feed.entries[1].summary == "Only content, no summary."


def test_it_resolves_relative_links_against_the_feed_url(feed_server):
    feed = fetch_and_parse(
        feed_server, (FEEDS / "atom.xml").read_bytes(), "application/atom+xml", path="/blog/atom"
    )

    assert feed.entries[1].url == feed_server.url("/posts/two")


def test_it_parses_an_rss_1_rdf_feed(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "rdf.xml").read_bytes(), "application/rdf+xml")

    a, b = feed.entries
    assert feed.title == "Example RDF Channel"
    assert (a.guid, a.url, a.title, a.summary) == (
        "https://rdf.example.net/a",
        "https://rdf.example.net/a",
        "RDF item A",
        "About A.",
    )
    assert b.published == datetime(2026, 11, 21, 15, 0, tzinfo=UTC)  # dc:date at -05:00


def test_it_reads_a_latin_1_feed_that_declares_utf_8(feed_server):
    body = (FEEDS / "latin1_declared_utf8.xml").read_bytes()

    feed = fetch_and_parse(feed_server, body, "application/rss+xml")

    assert feed.title == "Café Journal"
    assert feed.entries[0].title == "Crème brûlée returns"
    assert "CharacterEncodingOverride" in feed.problem


def test_it_reads_a_latin_1_feed_served_with_a_utf_8_header(feed_server):
    body = (FEEDS / "latin1.xml").read_bytes()

    feed = fetch_and_parse(feed_server, body, "application/rss+xml; charset=utf-8")

    assert feed.entries[0].title == "Crème brûlée returns"
    assert "CharacterEncodingOverride" in feed.problem


def test_it_recovers_the_complete_entries_of_a_truncated_feed(feed_server):
    feed = fetch_and_parse(feed_server, (FEEDS / "truncated.xml").read_bytes(), "text/xml")

    assert [entry.guid for entry in feed.entries] == ["cut-1", "cut-2"]
    assert feed.problem == "SAXParseException: <unknown>:16:43: no element found"


def test_it_refuses_an_html_page(feed_server):
    error = parse_error(feed_server, (FEEDS / "page.html").read_bytes(), "text/html")

    assert error.reason.startswith("parse_error: not a feed")


@pytest.mark.parametrize("body", [b"", b"  \n\t "])
def test_it_refuses_an_empty_body(feed_server, body):
    error = parse_error(feed_server, body, "application/rss+xml")

    assert error.reason == "parse_error: empty document"
    assert str(error) == f"feed {feed_server.url('/feed')}: parse_error: empty document"


@pytest.mark.parametrize("body", [b"\x00\x01\x02 garbage", b'{"items": []}', b"<root><a/></root>"])
def test_it_refuses_something_that_is_not_a_feed(body):
    with pytest.raises(ParseError, match=r"^parse_error: not a feed"):
        parse_feed(body)


def test_it_refuses_a_broken_feed_without_any_entry():
    with pytest.raises(ParseError, match=r"^parse_error: SAXParseException: .*no element found"):
        parse_feed(b'<rss version="2.0"><channel><title>Cut')


def test_a_valid_feed_without_entries_is_empty_not_an_error():
    feed = parse_feed(rss(""))

    assert feed == ParsedFeed(entries=[], title="t", problem=None)


def test_it_never_reads_a_local_file_named_by_the_content():
    # Given bare bytes, feedparser opens a file of that name; this one is a valid feed.
    path = str(FEEDS / "rss2.xml").encode()

    with pytest.raises(ParseError):
        parse_feed(path)


def test_an_entry_without_id_or_link_gets_a_stable_hash_of_title_and_date():
    item = "<item><title>{}</title><pubDate>Mon, 23 Nov 2026 09:30:00 GMT</pubDate></item>"
    body = rss(item.format("Alpha") + item.format("Beta"))

    alpha, beta = parse_feed(body).entries

    assert alpha.guid.startswith("sha256:")
    assert alpha.guid != beta.guid
    assert parse_feed(body).entries[0].guid == alpha.guid


def test_a_guid_seen_twice_keeps_the_first_entry():
    body = rss(
        "<item><title>First</title><guid>g</guid></item><item><title>Again</title><guid>g</guid></item>"
    )

    assert [entry.title for entry in parse_feed(body).entries] == ["First"]


def test_entries_without_title_link_or_summary_are_skipped():
    body = rss("<item><guid>empty</guid></item><item><title>Kept</title></item>")

    assert [entry.title for entry in parse_feed(body).entries] == ["Kept"]


def test_a_feed_whose_entries_are_all_empty_is_refused():
    with pytest.raises(ParseError, match="no entry has a title, link or summary"):
        parse_feed(rss("<item><guid>a</guid></item><item><guid>b</guid></item>"))


def test_it_bounds_long_titles_and_summaries():
    long = "word " * 2000
    body = rss(f"<item><title>{long}</title><description>{long}</description></item>")

    entry = parse_feed(body).entries[0]

    assert len(entry.title) == parse.TITLE_MAX
    assert len(entry.summary) == parse.SUMMARY_MAX
    assert entry.title.endswith("…")


def test_it_hashes_a_guid_too_long_to_store():
    body = rss(f"<item><title>t</title><guid isPermaLink='false'>{'x' * 2000}</guid></item>")

    guid = parse_feed(body).entries[0].guid

    assert guid.startswith("sha256:")
    assert len(guid) <= parse.GUID_MAX


def test_it_removes_control_characters_that_postgresql_refuses():
    body = rss("<item><title>a&#0;b\x01c</title><guid>g</guid></item>")

    assert parse_feed(body).entries[0].title == "abc"


def test_parse_error_rebuilds_from_its_args_as_celery_does():
    error = ParseError("parse_error: empty document", "http://x/y")

    # Celery's JSON result backend stores exc.args and calls the class with them again.
    copy = ParseError(*json.loads(json.dumps(error.args)))

    assert (copy.reason, copy.url, str(copy)) == (error.reason, error.url, str(error))
