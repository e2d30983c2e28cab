"""The entity matcher is built once per process and rebuilt when the entities change.

Each fetch of new entries asks Entity.objects.matcher(): a rebuild per fetch made matching grow
linearly with the number of entities (bench/RESULTS.md, target 3); a cache that never noticed
changes would keep matching deleted entities and miss new names.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pipeline.models import Article, Entity, EntityManager, Source
from pipeline.parse import ParsedEntry
from pipeline.tasks import store_entries

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def check_on_every_call(monkeypatch):
    """The table's fingerprint checked on every call, not every 5 s (conftest.py starts each
    test without a matcher)."""
    monkeypatch.setattr(EntityManager, "MATCHER_CHECK_EVERY", 0.0)


def mentions(text: str) -> set[str]:
    return {Entity.objects.get(pk=pk).slug for pk in Entity.objects.matcher().match(text)}


def test_the_matcher_is_reused_while_the_entities_stay_the_same():
    Entity.objects.create(name="Apple", slug="apple")
    first = Entity.objects.matcher()

    with CaptureQueriesContext(connection) as queries:
        again = Entity.objects.matcher()

    assert again is first
    # Only the fingerprint: count and latest change.
    assert len(queries) == 1
    assert "COUNT" in queries[0]["sql"].upper()
    assert "MAX" in queries[0]["sql"].upper()


def test_within_the_check_interval_the_matcher_is_trusted_without_a_query(monkeypatch):
    monkeypatch.setattr(EntityManager, "MATCHER_CHECK_EVERY", 5.0)
    Entity.objects.create(name="Apple", slug="apple")
    first = Entity.objects.matcher()
    Entity.objects.create(name="Tesla", slug="tesla")

    with CaptureQueriesContext(connection) as queries:
        again = Entity.objects.matcher()
    assert again is first
    assert len(queries) == 0
    assert mentions("Tesla") == set()  # not yet

    checked = EntityManager._cached.checked
    monkeypatch.setattr(EntityManager._cached, "checked", checked - 5.0)

    assert mentions("Tesla") == {"tesla"}


def test_an_added_entity_is_matched_from_the_next_call_on():
    Entity.objects.create(name="Apple", slug="apple")
    assert mentions("Apple and Tesla") == {"apple"}

    Entity.objects.create(name="Tesla", slug="tesla")

    assert mentions("Apple and Tesla") == {"apple", "tesla"}


def test_an_edited_alias_is_matched_and_the_old_one_no_longer():
    apple = Entity.objects.create(name="Apple", slug="apple", aliases=["AAPL"])
    assert mentions("AAPL rallies") == {"apple"}

    apple.aliases = ["Apple Inc."]
    apple.save()

    assert mentions("AAPL rallies") == set()
    assert mentions("Apple Inc. rallies") == {"apple"}


def test_a_deleted_entity_is_no_longer_matched():
    Entity.objects.create(name="Apple", slug="apple")
    tesla = Entity.objects.create(name="Tesla", slug="tesla")
    assert mentions("Apple and Tesla") == {"apple", "tesla"}

    tesla.delete()

    assert mentions("Apple and Tesla") == {"apple"}


def test_changes_the_fingerprint_cannot_see_are_picked_up_after_the_maximum_age(monkeypatch):
    Entity.objects.create(name="Apple", slug="apple", aliases=["AAPL"])
    assert mentions("Cupertino news") == set()
    # A queryset update leaves `updated` alone: the count and the latest change stay the same.
    Entity.objects.update(aliases=["Cupertino"])
    assert mentions("Cupertino news") == set()

    monkeypatch.setattr(EntityManager, "MATCHER_MAX_AGE", 0.0)

    assert mentions("Cupertino news") == {"apple"}


def test_store_entries_matches_with_the_current_entities():
    source = Source.objects.create(name="s", url="https://example.com/s.xml")
    Entity.objects.create(name="Apple", slug="apple")

    def entry(guid: str) -> ParsedEntry:
        return ParsedEntry(guid=guid, url="", title="Apple and Tesla", summary="", published=None)

    store_entries(source, [entry("a")], timezone.now())
    Entity.objects.create(name="Tesla", slug="tesla")
    store_entries(source, [entry("b")], timezone.now())

    linked = {
        a.guid: sorted(e.slug for e in a.entities.all()) for a in Article.objects.order_by("guid")
    }
    assert linked == {"a": ["apple"], "b": ["apple", "tesla"]}
