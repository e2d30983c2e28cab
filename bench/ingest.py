"""Target 3, ingestion: parse, match, score and store feed entries, in this process.

Each feed goes through what a fetch_source task does after the download: `parse_feed`, then
`store_entries` (match, score, store). The matcher and the scorer are wrapped with timers, so
the share of each step comes from the pipeline's own code path; "store" is the rest of
`store_entries`: the lookup of stored guids, building the rows, the inserts.

Matching against 50 and 5,000 entities runs on the same texts: the time per entry must not grow
with the number of entities (Aho-Corasick reads a text once, whatever the number of names).
"""

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from pipeline import tasks
from pipeline.entities import Matcher
from pipeline.models import Article, Entity, EntityManager, Source
from pipeline.parse import parse_feed

from .common import Row, log, median
from .feeds import ENTRIES_PER_FEED, entity_names, rss

ENTITIES = 5_000
FEW_ENTITIES = 50


def reset_pipeline() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE pipeline_article_entities, pipeline_article, pipeline_sentimentpoint, "
            "pipeline_source, pipeline_entity RESTART IDENTITY CASCADE"
        )


def create_entities(names: list[tuple[str, list[str]]]) -> None:
    Entity.objects.bulk_create(
        Entity(name=name, slug=f"bench-{i}", aliases=aliases)
        for i, (name, aliases) in enumerate(names)
    )


@contextmanager
def step_clock(seconds: dict[str, float]):
    """Time the matcher (getting it from the cache, or building it, included) and the scorer
    inside store_entries."""

    def timed(step: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[step] += time.perf_counter() - started

        return call

    real = (EntityManager.matcher, Matcher.match, tasks.score_text)
    EntityManager.matcher = timed("match", EntityManager.matcher)
    Matcher.match = timed("match", Matcher.match)
    tasks.score_text = timed("score", tasks.score_text)
    try:
        yield
    finally:
        EntityManager.matcher, Matcher.match, tasks.score_text = real


def ingest(feeds: list[tuple[Source, bytes]]) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    with step_clock(seconds):
        for source, content in feeds:
            started = time.perf_counter()
            feed = parse_feed(content, content_type="application/rss+xml", url=source.url)
            parsed = time.perf_counter()
            tasks.store_entries(source, feed.entries, timezone.now())
            seconds["parse"] += parsed - started
            seconds["store"] += time.perf_counter() - parsed
    seconds["store"] -= seconds["match"] + seconds["score"]
    return seconds


def matching_seconds(texts: list[str], entities: int, how: str) -> tuple[float, float]:
    """Time per entry to match `texts` with only the first `entities` entities in the table,
    in fetches of ENTRIES_PER_FEED entries, and the time it took to build the first matcher.
    `how` the matcher is had for each fetch:

    - "pipeline": Entity.objects.matcher(), as store_entries does. Timed in the steady state
      of a worker after its first fetch: the process's matcher is built first (the build,
      after each change of the entities, is the second figure), then each fetch asks for it
      and gets it back, with the table's fingerprint checked every 5 s;
    - "per-fetch": a new Matcher built from the table, as store_entries did before;
    - "one": one Matcher built beforehand, the automaton alone.
    """
    with transaction.atomic():
        # The other entities are deleted for the measurement and come back with the rollback.
        keep = Entity.objects.order_by("id").values_list("id", flat=True)[entities - 1]
        Entity.objects.filter(id__gt=keep).delete()
        EntityManager._cached = None

        def build() -> Matcher:
            return Matcher(
                (i, [name, *aliases])
                for i, name, aliases in Entity.objects.values_list("id", "name", "aliases")
            )

        get = {"pipeline": Entity.objects.matcher, "per-fetch": build}.get(how)
        started = time.perf_counter()
        matcher = (get or build)()
        built = time.perf_counter() - started
        started = time.perf_counter()
        for i, text in enumerate(texts):
            if get is not None and not i % ENTRIES_PER_FEED:
                matcher = get()
            matcher.match(text)
        seconds = time.perf_counter() - started
        transaction.set_rollback(True)
    EntityManager._cached = None
    return seconds / len(texts), built


def run(entries: int, runs: int) -> list[Row]:
    """`entries` feed entries in feeds of 50, in `runs` equal parts; the figure is the median
    of the parts' rates."""
    names = entity_names(ENTITIES)
    all_names = [name for name, aliases in names] + [a for _, aliases in names for a in aliases]
    reset_pipeline()
    create_entities(names)
    count = max(runs, -(-entries // ENTRIES_PER_FEED))
    sources = Source.objects.bulk_create(
        Source(name=f"bench {i}", url=f"https://news.example/{i}/rss") for i in range(count)
    )
    feeds = [(source, rss(i, all_names)) for i, source in enumerate(sources)]
    parts = [ingest(feeds[i::runs]) for i in range(runs)]
    per_part = [len(feeds[i::runs]) * ENTRIES_PER_FEED for i in range(runs)]
    rates = [n / sum(p.values()) for n, p in zip(per_part, parts, strict=True)]
    total = defaultdict(float)
    for part in parts:
        for step, value in part.items():
            total[step] += value
    shares = ", ".join(
        f"{step} {total[step] / sum(total.values()):.0%}"
        for step in ("parse", "match", "score", "store")
    )
    log("ingest: %s entries/s, %s", " ".join(f"{r:.0f}" for r in rates), shares)
    rows = [
        Row(
            "3 ingest: entries parsed, matched, scored, stored",
            median(rates),
            "entries/s",
            note=f"{count * ENTRIES_PER_FEED} entries, {ENTITIES} entities; time: {shares}",
        )
    ]
    rows += matching([a.text() for a in Article.objects.order_by("id")[:5000]], runs)
    reset_pipeline()
    return rows


MATCHING = {
    "pipeline": ("as store_entries gets it (kept per process, steady state)", "< 3"),
    "per-fetch": ("a matcher built per fetch (store_entries before)", ""),
    "one": ("one matcher, the automaton alone", ""),
}


def matching(texts: list[str], runs: int) -> list[Row]:
    rows = []
    builds: dict[int, list[float]] = {FEW_ENTITIES: [], ENTITIES: []}
    for how, (label, target) in MATCHING.items():
        few, many = [], []
        for _ in range(runs):
            for count, times in ((FEW_ENTITIES, few), (ENTITIES, many)):
                per_entry, built = matching_seconds(texts, count, how)
                times.append(per_entry)
                if how == "pipeline":
                    builds[count].append(built)
        ratio = median(many) / median(few)
        rows.append(
            Row(
                f"3 matching: time per entry, {ENTITIES} vs {FEW_ENTITIES} entities, {label}",
                median(many) * 1e6,
                "µs",
                reference=f"{median(few) * 1e6:.1f} µs with {FEW_ENTITIES}",
                ratio=ratio,
                target=target,
                passed=ratio < 3 if target else None,
                note=f"{len(texts)} entries, fetches of {ENTRIES_PER_FEED}",
            )
        )
    few_ms, many_ms = (median(builds[n]) * 1e3 for n in (FEW_ENTITIES, ENTITIES))
    rows.append(
        Row(
            f"3 matching: a process's matcher (re)built after the entities change, {ENTITIES} "
            f"vs {FEW_ENTITIES}",
            many_ms,
            "ms",
            reference=f"{few_ms:.1f} ms with {FEW_ENTITIES}",
            ratio=many_ms / few_ms,
            note="once per process and change, not per fetch",
        )
    )
    return rows
