"""System checks for settings that would make a deployment unsafe.

The production ones are deploy checks: `manage.py check --deploy` runs them, and so do the compose
start scripts before they start anything (compose/web.sh, compose/worker.sh). `make run`, the
tests' workers and `manage.py migrate` do not, since they run on development settings on purpose.
The Expat check runs with every check: no process should parse feeds with a vulnerable Expat.

Registered from PipelineConfig.ready().
"""

import pyexpat
from typing import Any

from django.conf import settings
from django.core import checks

SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5
# Expat 2.4.0 added protection against entity expansion (billion laughs, CVE-2013-0340) and
# 2.4.1 fixed its accounting; anything older lets a small feed expand into gigabytes.
EXPAT_MIN_VERSION = (2, 4, 1)


def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    key = settings.SECRET_KEY
    if key == settings.DEVELOPMENT_SECRET_KEY:
        return [
            checks.Error(
                "DJANGO_SECRET_KEY is unset or the development key: anyone could sign sessions "
                "and password reset links.",
                hint='Set it to a long random value: python -c "import secrets; '
                'print(secrets.token_urlsafe(50))"',
                id="newsbeat.E001",
            )
        ]
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return [
            checks.Error(
                f"DJANGO_SECRET_KEY is too weak: it needs at least {SECRET_KEY_MIN_LENGTH} "
                f"characters, {SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different "
                f"(it has {len(key)}).",
                hint='python -c "import secrets; print(secrets.token_urlsafe(50))"',
                id="newsbeat.E002",
            )
        ]
    return []


def check_allowed_hosts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if "*" in settings.ALLOWED_HOSTS:
        return [
            checks.Error(
                "DJANGO_ALLOWED_HOSTS contains '*': any Host header is accepted, so links the "
                "app builds (password reset, redirects) can point to an attacker's host.",
                hint="List the host names the app is served under.",
                id="newsbeat.E003",
            )
        ]
    return []


def check_private_feeds(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS and not (
        settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS_IN_PRODUCTION
    ):
        return [
            checks.Error(
                "NEWSBEAT_ALLOW_PRIVATE_FEEDS is on: a feed URL could make the worker fetch "
                "loopback, private or cloud metadata addresses (169.254.169.254).",
                hint="Set NEWSBEAT_ALLOW_PRIVATE_FEEDS=0. An intranet deployment that must "
                "fetch private feeds also sets NEWSBEAT_ALLOW_PRIVATE_FEEDS_IN_PRODUCTION=1.",
                id="newsbeat.E004",
            )
        ]
    return []


def check_expat(
    app_configs: Any = None, version: tuple[int, int, int] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """`version` defaults to the linked Expat's (pyexpat.version_info); tests pass others."""
    version = version or pyexpat.version_info
    if tuple(version) < EXPAT_MIN_VERSION:
        found = ".".join(map(str, version))
        needed = ".".join(map(str, EXPAT_MIN_VERSION))
        return [
            checks.Error(
                f"Expat {found} is vulnerable to entity expansion (billion laughs): feeds "
                f"could exhaust memory. Newsbeat needs Expat {needed} or newer.",
                hint="Use a Python linked against a newer libexpat (pyexpat.EXPAT_VERSION "
                "names the one in use).",
                id="newsbeat.E005",
            )
        ]
    return []


def register() -> None:
    checks.register(check_secret_key, checks.Tags.security, deploy=True)
    checks.register(check_allowed_hosts, checks.Tags.security, deploy=True)
    checks.register(check_private_feeds, checks.Tags.security, deploy=True)
    checks.register(check_expat, checks.Tags.security)
