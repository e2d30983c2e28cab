"""Seed the demo: public feeds and starter entities, and optionally the bundled sample feeds.

    python manage.py seed_demo
    python manage.py seed_demo --sample-base-url http://127.0.0.1:8001/

Sources are keyed by URL and entities by slug, and only created: running it again, or after an
operator renamed, disabled or re-aliased something in the admin, changes nothing that exists.
The data lives in pipeline/fixtures/*.json (plain lists, not Django fixtures: loaddata cannot
read them). With a base URL, each pipeline/samples/news-*.xml or discussion-*.xml file becomes
an enabled source at base URL + file name, for a server that serves that folder.
"""

import json
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pipeline.models import Entity, Kind, Source

PIPELINE_DIR = Path(__file__).resolve().parents[2]
FIXTURES_DIR = PIPELINE_DIR / "fixtures"
SAMPLES_DIR = PIPELINE_DIR / "samples"
SAMPLE_KINDS = {"news-": Kind.NEWS, "discussion-": Kind.DISCUSSION}


def sample_sources(base_url: str) -> list[dict[str, str]]:
    """One source per bundled sample file, its kind from the file name's prefix."""
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    sources = []
    for path in sorted(SAMPLES_DIR.glob("*.xml")):
        kind = next((k for prefix, k in SAMPLE_KINDS.items() if path.name.startswith(prefix)), None)
        if kind is not None:
            sources.append(
                {"name": f"Sample: {path.stem}", "url": urljoin(base_url, path.name), "kind": kind}
            )
    return sources


class Command(BaseCommand):
    help = "Create the demo sources and entities (never changes existing ones)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--sample-base-url",
            help="Also register the bundled sample feeds (pipeline/samples/) served at this URL.",
        )

    @transaction.atomic
    def handle(self, *args, sample_base_url: str | None = None, **options) -> None:
        sources = json.loads((FIXTURES_DIR / "sources.json").read_text())
        if sample_base_url:
            if urlsplit(sample_base_url).scheme not in ("http", "https"):
                raise CommandError(f"--sample-base-url {sample_base_url!r} is not http(s)")
            sources += sample_sources(sample_base_url)
        created = 0
        for source in sources:
            try:
                _, was_created = Source.objects.get_or_create(
                    url=source["url"],
                    defaults={
                        "name": source["name"],
                        "kind": source["kind"],
                        "enabled": source.get("enabled", True),
                    },
                )
            except ValidationError as error:
                # A sample server on loopback while private feed addresses are refused.
                raise CommandError(
                    f"source {source['url']}: {' '.join(error.messages)}"
                    " (NEWSBEAT_ALLOW_PRIVATE_FEEDS=1 allows loopback and private addresses)"
                ) from error
            created += was_created
        self.stdout.write(f"sources: {created} created, {len(sources) - created} kept")

        entities = json.loads((FIXTURES_DIR / "entities.json").read_text())
        created = 0
        for entity in entities:
            _, was_created = Entity.objects.get_or_create(
                slug=entity["slug"],
                defaults={"name": entity["name"], "aliases": entity.get("aliases", [])},
            )
            created += was_created
        self.stdout.write(f"entities: {created} created, {len(entities) - created} kept")
