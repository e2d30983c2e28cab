"""Turn the bytes of a feed into plain entries: text without markup, http(s) links, UTC times.

feedparser does the parsing; it only ever sees bytes (wrapped in BytesIO, because given a bare
string or bytes it may open a local file or a URL of that name), and never a document type
declaration (see `_replace_doctype`). External entities and DTDs are never loaded: feedparser
turns off external general entities in the SAX parser, which then resolves none, parameter
entities included (tests/pipeline/test_xml_attacks.py).
"""

import hashlib
import html
import io
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import feedparser
import feedparser.api
from django.utils.html import strip_tags
from requests.utils import requote_uri

logger = logging.getLogger(__name__)

TITLE_MAX = 500
SUMMARY_MAX = 5000
URL_MAX = 2000
GUID_MAX = 500
PROBLEM_MAX = 300
# C0 controls other than tab/newline/carriage return, and DEL: PostgreSQL refuses NUL in text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s+")
# What can close a DOCTYPE early or hide a ">" from it: quoted literals, comments, brackets.
_DOCTYPE_TOKEN = re.compile(rb"\"[^\"]*\"|'[^']*'|<!--.*?-->|[\[\]>]", re.DOTALL)


class ParseError(Exception):
    """Nothing usable came out of a feed. `reason` reads 'parse_error: <what went wrong>'."""

    def __init__(self, reason: str, url: str = "") -> None:
        # Both in args, so the error survives pickling and Celery's JSON result backend.
        super().__init__(reason, url)
        self.reason = reason
        self.url = url

    def __str__(self) -> str:
        return f"feed {self.url}: {self.reason}" if self.url else self.reason


@dataclass(frozen=True)
class ParsedEntry:
    guid: str
    url: str  # http(s) only, else ""
    title: str  # plain text
    summary: str  # plain text
    published: datetime | None  # aware, UTC


@dataclass(frozen=True)
class ParsedFeed:
    entries: list[ParsedEntry]
    title: str
    problem: str | None  # what was wrong with a feed whose entries were still recovered


def parse_feed(content: bytes, *, content_type: str | None = None, url: str = "") -> ParsedFeed:
    """Parse feed bytes; `content_type` helps guess the encoding, `url` (the feed's final URL)
    resolves relative entry links.

    A well-formed feed with no entries gives an empty ParsedFeed. A malformed feed that still
    yields entries gives them with `problem` set. Raises ParseError when nothing usable comes
    out: an empty body, an HTML page, garbage. Entries without title, link or summary are
    skipped; a guid seen twice keeps its first entry.
    """
    if not content.strip():
        raise ParseError("parse_error: empty document", url)
    # No Content-Location: feedparser would resolve RSS guids against it, so an entry's guid
    # would change when its feed moves. Relative links are resolved here instead.
    headers = {"content-type": content_type} if content_type else None
    parsed = feedparser.parse(io.BytesIO(content), response_headers=headers)
    problem = _bozo_reason(parsed) if parsed.get("bozo") else None
    if not parsed.entries and not parsed.get("version"):
        detail = f" ({problem})" if problem else ""
        raise ParseError(f"parse_error: not a feed{detail}", url)
    if not parsed.entries and problem:
        raise ParseError(f"parse_error: {problem}", url)
    entries = _unique(
        entry for entry in (_entry(raw, url) for raw in parsed.entries) if entry is not None
    )
    if parsed.entries and not entries:
        raise ParseError("parse_error: no entry has a title, link or summary", url)
    logger.info(
        "event=feed_parsed url=%s version=%s entries=%d skipped=%d problem=%s",
        url,
        parsed.get("version") or "unknown",
        len(entries),
        len(parsed.entries) - len(entries),
        problem,
    )
    return ParsedFeed(
        entries=entries, title=_plain(parsed.feed.get("title", ""), TITLE_MAX), problem=problem
    )


def _replace_doctype(data: bytes) -> tuple[str | None, bytes, dict[str, str]]:
    """Stand-in for feedparser's `replace_doctype`: drop the DOCTYPE with its internal subset.

    feedparser keeps the entities an internal subset declares with plain text values, and when
    Expat gives up on the document its loose parser expands them with no limit: a 160 KB feed
    declaring a 100 KB entity and using it 20,000 times took 2 minutes and 6 GB of memory
    (Expat's own amplification limit had stopped it). A feed needs no declarations of its own;
    without them its entity references are left as text. Returns what the original returns:
    the RSS version the DOCTYPE names ('rss091n' or None), the document, the entities (none).
    feedparser calls this after converting the document to UTF-8.
    """
    start = data.find(b"<!DOCTYPE")
    if start < 0:
        return None, data, {}
    end = len(data)  # an unterminated DOCTYPE swallows the rest: nothing to parse is fine
    depth = 0
    for token in _DOCTYPE_TOKEN.finditer(data, start + len(b"<!DOCTYPE")):
        if token.group() == b"[":
            depth += 1
        elif token.group() == b"]":
            depth -= 1
        elif token.group() == b">" and depth <= 0:
            end = token.end()
            break
    version = "rss091n" if b"netscape" in data[start:end].lower() else None
    return version, data[:start] + data[end:], {}


# feedparser.parse looks the function up in feedparser.api at every call: the one hook it offers.
# Fail loudly if an upgrade renames it, rather than parse hostile DTDs again.
if not callable(getattr(feedparser.api, "replace_doctype", None)):
    raise ImportError("feedparser.api.replace_doctype is gone: see pipeline/parse.py")
feedparser.api.replace_doctype = _replace_doctype


def _entry(raw: dict, feed_url: str) -> ParsedEntry | None:
    title = _plain(raw.get("title", ""), TITLE_MAX)
    # feedparser fills an Atom entry's summary from its <content> when it has no <summary>.
    summary = _plain(raw.get("summary", ""), SUMMARY_MAX)
    link = _clean(raw.get("link", ""))
    url = _http_url(urljoin(feed_url, link) if link else "")
    if not (title or summary or url):
        return None
    published = _published(raw)
    return ParsedEntry(
        guid=_guid(_clean(raw.get("id", "")) or link, title, published),
        url=url,
        title=title,
        summary=summary,
        published=published,
    )


def _guid(candidate: str, title: str, published: datetime | None) -> str:
    """The entry's id or link; else a hash of title and date, stable across fetches."""
    if not candidate:
        stamp = published.isoformat() if published else ""
        candidate = "sha256:" + hashlib.sha256(f"{title}\n{stamp}".encode()).hexdigest()
    if len(candidate) > GUID_MAX:
        # Hash instead of cutting: two long ids sharing a prefix must stay distinct.
        candidate = "sha256:" + hashlib.sha256(candidate.encode()).hexdigest()
    return candidate


def _http_url(link: str) -> str:
    """The link if it is an absolute http(s) URL of sane length, else "".

    Characters a URL may not contain (quotes, angle brackets) are percent-encoded, so the link
    is inert wherever it is put, even in a template that forgot to escape it.
    """
    if not link or any(char.isspace() for char in link):
        return ""
    parts = urlsplit(link)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    link = requote_uri(link)
    return link if len(link) <= URL_MAX else ""


def _published(raw: dict) -> datetime | None:
    # feedparser normalises dates to UTC struct_time; a nonsense date becomes None, not an error.
    parsed: time.struct_time | None = raw.get("published_parsed") or raw.get("updated_parsed")
    if not parsed:
        return None
    try:
        return datetime(*parsed[:6], tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _plain(text: str, limit: int) -> str:
    """Markup stripped, entities decoded, whitespace collapsed, at most `limit` characters."""
    text = html.unescape(strip_tags(text or ""))
    text = _WHITESPACE.sub(" ", _CONTROL.sub("", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _clean(value: str) -> str:
    return _CONTROL.sub("", value or "").strip()


def _unique(entries) -> list[ParsedEntry]:
    seen: set[str] = set()
    unique = []
    for entry in entries:
        if entry.guid not in seen:
            seen.add(entry.guid)
            unique.append(entry)
    return unique


def _bozo_reason(parsed: dict) -> str:
    error = parsed.get("bozo_exception")
    reason = f"{type(error).__name__}: {error}" if error else "malformed feed"
    return _WHITESPACE.sub(" ", reason).strip()[:PROBLEM_MAX]
