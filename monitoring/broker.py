"""The Redis client the monitoring guards, beat lock and audit spool share (the broker itself)."""

from functools import cache

import redis
from celery import current_app

KEY_PREFIX = "newsbeat:"


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    """A Redis client for the broker (keyed by URL, so tests that move the broker get theirs)."""
    return _client(current_app.conf.broker_url)
