import pytest

from pipeline.models import EntityManager
from tests.feedserver import FeedServer


@pytest.fixture(autouse=True)
def _fresh_entity_matcher(monkeypatch):
    """Each test has entities of its own (rolled back after it): a matcher cached by an earlier
    test, trusted for 5 s without asking the database, would match the earlier test's."""
    monkeypatch.setattr(EntityManager, "_cached", None)


@pytest.fixture
def feed_server(settings):
    """A started FeedServer on 127.0.0.1, closed afterwards.

    Loopback feeds are allowed while it runs, and fetch retries back off in hundredths of a
    second instead of seconds (NEWSBEAT_FETCH_BACKOFF) so retry tests stay fast.
    """
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True
    settings.NEWSBEAT_FETCH_BACKOFF = 0.01
    server = FeedServer()
    yield server
    server.close()
