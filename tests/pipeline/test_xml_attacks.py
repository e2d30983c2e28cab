"""Hostile XML served over HTTP and parsed as the worker does (fetch_feed, then parse_feed):
entity expansion stays small and quick, and nothing outside the document is ever read, neither
a local file nor a URL (the feed server records every request it gets).
"""

import time
import tracemalloc

import pytest

from pipeline.fetch import fetch_feed
from pipeline.parse import ParseError, parse_feed

MAX_SECONDS = 5.0
MAX_BYTES = 20 * 1024 * 1024
ITEM = "<item><title>{title}</title><description>{summary}</description><guid>g1</guid></item>"


def rss(doctype: str, title: str = "Hello", summary: str = "world") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n{doctype}\n'
        f'<rss version="2.0"><channel><title>Feed</title>'
        f"{ITEM.format(title=title, summary=summary)}</channel></rss>"
    ).encode()


def fetch_and_parse(server, body: bytes):
    """Serve `body`, fetch and parse it; returns (entries or None, seconds, peak bytes)."""
    server.route("/feed.xml", body=body, headers={"Content-Type": "application/rss+xml"})
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = fetch_feed(server.url("/feed.xml"))
        entries = parse_feed(result.content, content_type=result.content_type).entries
    except ParseError:
        entries = None
    finally:
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return entries, seconds, peak


def text_of(entries) -> str:
    return "".join(f"{e.title}\n{e.summary}\n" for e in entries or [])


def billion_laughs(newlines: bool) -> str:
    sep = "\n" if newlines else ""
    lines = ['<!ENTITY lol "lol">']
    for i in range(1, 10):
        previous = f"lol{i - 1}" if i > 1 else "lol"
        lines.append(f'<!ENTITY lol{i} "{f"&{previous};" * 10}">')
    return f"<!DOCTYPE rss [{sep}{sep.join(lines)}{sep}]>"


@pytest.mark.parametrize("newlines", [True, False], ids=["one-per-line", "all-on-one-line"])
def test_billion_laughs_expands_nothing(feed_server, newlines):
    entries, seconds, peak = fetch_and_parse(feed_server, rss(billion_laughs(newlines), "&lol9;"))

    assert "lollollol" not in text_of(entries)
    assert seconds < MAX_SECONDS
    assert peak < MAX_BYTES


def test_a_large_entity_used_many_times_is_not_expanded(feed_server):
    # "Quadratic blowup": no nesting, so feedparser called the entity safe and its fallback
    # parser expanded it without limit (100 MB of text from a 160 KB feed; 2 GB at 20,000 uses).
    doctype = f'<!DOCTYPE rss [\n<!ENTITY big "{"A" * 100_000}">\n]>'
    body = rss(doctype, summary="&big;" * 1_000)

    entries, seconds, peak = fetch_and_parse(feed_server, body)

    assert "AAAAAAAAAA" not in text_of(entries)
    assert seconds < MAX_SECONDS
    assert peak < MAX_BYTES


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE rss [\n<!ENTITY xxe SYSTEM "file://{path}">\n]>',
        '<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{path}">]>',
        "<!DOCTYPE rss [\n<!ENTITY xxe SYSTEM 'file://{path}'>\n]>",
        '<!DOCTYPE rss [\n<!ENTITY % p SYSTEM "file://{path}">\n%p;\n]>',
    ],
    ids=["external-entity", "one-line", "single-quotes", "parameter-entity"],
)
def test_external_entities_never_read_a_local_file(feed_server, tmp_path, doctype):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    for path in (secret, "/etc/passwd"):
        body = rss(doctype.format(path=path), title="&xxe;", summary="&xxe;")

        entries, _, _ = fetch_and_parse(feed_server, body)

        assert "TOP-SECRET-CONTENT" not in text_of(entries)
        assert "root:" not in text_of(entries)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE rss SYSTEM "{url}">',
        '<!DOCTYPE rss PUBLIC "-//Evil//DTD RSS//EN" "{url}">',
        '<!DOCTYPE rss [\n<!ENTITY % dtd SYSTEM "{url}">\n%dtd;\n]>',
        '<!DOCTYPE rss [\n<!ENTITY ext SYSTEM "{url}">\n]>',
    ],
    ids=["external-dtd", "public-dtd", "parameter-entity", "external-entity"],
)
def test_external_dtds_and_entities_are_never_fetched(feed_server, doctype):
    feed_server.route("/evil.dtd", body=b'<!ENTITY ext "FETCHED">')
    body = rss(doctype.format(url=feed_server.url("/evil.dtd")), title="&ext;")

    entries, _, _ = fetch_and_parse(feed_server, body)

    assert [path for _, path, _ in feed_server.requests] == ["/feed.xml"]
    assert "FETCHED" not in text_of(entries)


def test_a_feed_with_a_doctype_still_parses(feed_server):
    netscape = (
        '<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        '"http://my.netscape.com/publish/formats/rss-0.91.dtd">'
    )

    entries, _, _ = fetch_and_parse(feed_server, rss(netscape, "Caf&#233; &amp; bar"))

    assert [(e.title, e.summary) for e in entries] == [("Café & bar", "world")]


def test_a_doctype_hiding_its_end_in_quotes_and_comments_is_removed_whole(feed_server):
    doctype = "<!DOCTYPE rss [\n<!-- ]> --><!ENTITY a \"x]>y\">\n<!ENTITY b '>'>\n]>"

    entries, _, _ = fetch_and_parse(feed_server, rss(doctype, "&a;&b;"))

    assert [e.title for e in entries] == ["&a;&b;"]
