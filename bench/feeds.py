"""Synthetic feeds and entities for the fan-out and ingestion benchmarks, the same every run.

Entities are pairs of made-up words ("Karvo Tenmira"), each with one alias, so that none is an
English word or a part of one. Entries read like news: common and sentiment-laden English
words, with an entity name or two in the title and the summary.
"""

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape

SYLLABLES = "ka ro te mi za vu lo ne si da qui fen gor bal tri sem ox yul pra dez".split()  # noqa: SIM905
WORDS = (  # noqa: SIM905
    "the a of to in and for on with as by at from after over new report says market city "
    "government company people year week talks plan deal court vote leaders growth price "
    "strong gains record wins praised hopeful success improves rises boost support "
    "crisis falls fails losses attack warns fears collapse scandal weak cuts protest"
).split()
ENTRIES_PER_FEED = 50


def entity_names(count: int, seed: int = 6) -> list[tuple[str, list[str]]]:
    """`count` (name, [alias]) pairs of made-up words, all distinct."""
    rng = random.Random(seed)
    seen: set[str] = set()
    entities = []
    while len(entities) < count:
        first = "".join(rng.choices(SYLLABLES, k=2)).capitalize()
        second = "".join(rng.choices(SYLLABLES, k=3)).capitalize()
        name = f"{first} {second}"
        if name.casefold() in seen:
            continue
        seen.add(name.casefold())
        entities.append((name, [f"{first}{second[:2]} Group"]))
    return entities


def sentence(rng: random.Random, words: int, names: list[str], mentions: int) -> str:
    parts = rng.choices(WORDS, k=words)
    for name in rng.sample(names, min(mentions, len(names))):
        parts.insert(rng.randrange(len(parts) + 1), name)
    return " ".join(parts)


def rss(feed: int, names: list[str], entries: int = ENTRIES_PER_FEED, first: int = 0) -> bytes:
    """An RSS 2.0 document with items first .. first + entries - 1 of feed `feed`, newest first.

    An item's guid and text depend on its feed and number only, so a window moved on by one
    holds one new item.
    """
    published = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    items = []
    for i in reversed(range(first, first + entries)):
        rng = random.Random(feed * 100_003 + i)
        title = sentence(rng, 9, names, 1)
        summary = sentence(rng, 40, names, 2)
        items.append(
            "<item>"
            f"<title>{escape(title.capitalize())}</title>"
            f"<link>https://news.example/{feed}/{i}</link>"
            f"<guid>urn:bench:{feed}:{i}</guid>"
            f"<pubDate>{format_datetime(published + timedelta(minutes=i))}</pubDate>"
            f"<description>&lt;p&gt;{escape(summary.capitalize())}.&lt;/p&gt;</description>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>Bench feed {feed}</title><link>https://news.example/{feed}</link>"
        f"<description>Benchmark feed</description>{''.join(items)}</channel></rss>"
    ).encode()
