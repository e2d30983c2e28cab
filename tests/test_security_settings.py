"""Production settings: `manage.py check --deploy` passes with the compose environment and
refuses the mistakes that would make a deployment unsafe (project/settings.py, project/checks.py).
"""

import json
import os
import pyexpat
import secrets
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from project import checks
from tests.processes import ROOT
from tests.test_compose import env_file

SETTINGS_TO_SHOW = (
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
)


def compose_env(**overrides: str | None) -> dict[str, str]:
    """The web container's environment: .env.example with its blanks filled. None removes."""
    env = {
        "PATH": os.environ["PATH"],
        **env_file(ROOT / ".env.example"),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "FLOWER_BASIC_AUTH": f"operator:{secrets.token_urlsafe(12)}",
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def deploy_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_under(env: dict[str, str]) -> dict:
    """SETTINGS_TO_SHOW as a fresh process computes them from `env`."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{n: getattr(settings, n) for n in {SETTINGS_TO_SHOW!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


# --- check --deploy in a subprocess, with the compose environment -------------------------------


def test_deploy_check_passes_with_the_compose_environment():
    result = deploy_check(compose_env())

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("secret_key", "message"),
    [
        (None, "DJANGO_SECRET_KEY is unset or the development key"),
        ("", "DJANGO_SECRET_KEY is unset or the development key"),
        ("newsbeat-insecure-development-key", "DJANGO_SECRET_KEY is unset or the development key"),
        ("too-short-" * 4, "DJANGO_SECRET_KEY is too weak"),
        ("a" * 60, "DJANGO_SECRET_KEY is too weak"),
    ],
    ids=["missing", "empty", "development-key", "short", "one-character"],
)
def test_deploy_check_refuses_a_missing_default_or_weak_secret_key(secret_key, message):
    result = deploy_check(compose_env(DJANGO_SECRET_KEY=secret_key))

    assert result.returncode != 0
    assert message in result.stderr


def test_deploy_check_refuses_private_feed_addresses():
    result = deploy_check(compose_env(NEWSBEAT_ALLOW_PRIVATE_FEEDS="1"))

    assert result.returncode != 0
    assert "(newsbeat.E004) NEWSBEAT_ALLOW_PRIVATE_FEEDS is on" in result.stderr


def test_the_web_start_script_refuses_to_start_without_a_secret_key():
    # Stops before migrate: no database is needed to see it refuse.
    env = compose_env(DJANGO_SECRET_KEY=None, DATABASE_URL="postgres://nobody@127.0.0.1:9/x")
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"

    result = subprocess.run(
        [ROOT / "compose" / "web.sh"], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "newsbeat.E001" in result.stderr
    assert "migrat" not in result.stdout.lower()


def test_make_run_keeps_development_defaults():
    # What project/run.py sets for its children; nothing in the environment says HTTPS.
    shown = settings_under({"PATH": os.environ["PATH"], "DJANGO_DEBUG": "1"})

    assert shown["DEBUG"] is True
    assert not any(shown[name] for name in SETTINGS_TO_SHOW[1:])


def test_https_turns_on_redirects_secure_cookies_and_hsts():
    shown = settings_under(compose_env())

    assert shown == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def test_a_proxy_header_that_is_not_a_header_name_stops_the_program():
    with pytest.raises(subprocess.CalledProcessError) as caught:
        settings_under(compose_env(NEWSBEAT_PROXY_SSL_HEADER="X-Forwarded-Proto: https"))

    assert "NEWSBEAT_PROXY_SSL_HEADER='X-Forwarded-Proto: https' is not a header name" in (
        caught.value.stderr
    )


# --- Behind the proxy: HTTPS redirect, but probes answer over plain HTTP ------------------------


@pytest.fixture
def https_settings(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    return settings


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health/live/", "/health/", "/metrics"])
def test_probes_answer_over_plain_http_when_https_is_on(client, https_settings, path, broker):
    response = client.get(path)

    assert response.status_code in (200, 503)  # an answer, not a redirect to https://


def test_the_admin_is_redirected_to_https_and_sends_hsts_there(client, https_settings):
    plain = client.get("/admin/login/")
    secure = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")

    assert plain.status_code == 301
    assert plain["Location"] == "https://testserver/admin/login/"
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=3600")


# --- The check functions ------------------------------------------------------------------------


def test_private_feeds_are_allowed_in_production_only_with_the_override(settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True
    assert [e.id for e in checks.check_private_feeds()] == ["newsbeat.E004"]

    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS_IN_PRODUCTION = True
    assert checks.check_private_feeds() == []


def test_a_wildcard_allowed_host_is_refused(settings):
    settings.ALLOWED_HOSTS = ["newsbeat.example.com", "*"]

    assert [e.id for e in checks.check_allowed_hosts()] == ["newsbeat.E003"]


@pytest.mark.parametrize(
    ("version", "refused"),
    [((2, 2, 8), True), ((2, 4, 0), True), ((2, 4, 1), False), ((2, 6, 4), False)],
)
def test_expat_older_than_2_4_1_is_refused(version, refused):
    errors = checks.check_expat(version=version)

    assert bool(errors) is refused
    if refused:
        assert errors[0].id == "newsbeat.E005"
        assert ".".join(map(str, version)) in errors[0].msg


def test_the_linked_expat_passes():
    assert checks.check_expat() == []


def test_every_check_refuses_a_vulnerable_expat_not_only_deploy_checks(monkeypatch):
    monkeypatch.setattr(pyexpat, "version_info", (2, 2, 0))

    with pytest.raises(SystemCheckError, match=r"newsbeat\.E005"):
        call_command("check")
