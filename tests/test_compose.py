"""docker-compose.yml and the start scripts in compose/.

Docker does not run here, so the compose file is read as data and its promises checked; then each
service's start script runs outside Docker against the local PostgreSQL and Redis, with the
values from .env.example, and each service's own healthcheck command must pass against it (and
fail once it is stopped).
"""

import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
import requests
import yaml
from django.conf import settings

from tests.processes import ROOT, Process, free_port, running, wait_for

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("web", "worker", "fetch-worker", "beat", "flower")


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file, as Compose reads the simple cases (no interpolation)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'")
    return values


def settings_variables() -> set[str]:
    """Every variable project/settings.py reads through its env_* helpers."""
    source = (ROOT / "project" / "settings.py").read_text()
    return set(re.findall(r'env_(?:str|bool|int|list)\(\s*"([A-Z0-9_]+)"', source))


def start_script(service: str) -> Path:
    """The compose/ script a service runs (the image keeps the checkout at /app)."""
    (command,) = SERVICES[service]["command"]
    return ROOT / command.removeprefix("/app/")


def healthcheck_shell(service: str) -> str:
    """A service's healthcheck as the container's shell sees it ($$ is Compose's escape for $)."""
    kind, *test = SERVICES[service]["healthcheck"]["test"]
    command = test[0] if kind == "CMD-SHELL" else subprocess.list2cmdline(test)
    return command.replace("$$", "$")


def seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return int(number) * (60 if unit == "m" else 1)


def run_healthcheck(service: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the healthcheck from the checkout (the image's WORKDIR) within its compose timeout."""
    return subprocess.run(
        ["sh", "-c", healthcheck_shell(service)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(SERVICES[service]["healthcheck"]["timeout"]),
    )


def test_every_service_has_a_healthcheck_and_reads_env_file():
    assert set(SERVICES) == {"postgres", "redis", *APP_SERVICES}
    for name, service in SERVICES.items():
        assert service["healthcheck"]["test"], name
        assert service["env_file"] == ".env", name


def test_services_wait_for_their_dependencies_to_be_healthy():
    for name in APP_SERVICES:
        depends_on = SERVICES[name]["depends_on"]
        assert "redis" in depends_on, name
        assert {c["condition"] for c in depends_on.values()} == {"service_healthy"}, name
    # web applies the migrations that the workers and beat need.
    for name in ("worker", "fetch-worker", "beat"):
        assert "web" in SERVICES[name]["depends_on"], name


def test_workers_get_the_time_to_finish_their_running_tasks():
    for name in ("worker", "fetch-worker"):
        assert seconds(SERVICES[name]["stop_grace_period"]) > settings.CELERY_TASK_TIME_LIMIT, name


def test_redis_keeps_queued_tasks():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_app_services_run_a_start_script_that_execs_the_server():
    for name in APP_SERVICES:
        lines = start_script(name).read_text().strip().splitlines()
        assert start_script(name).stat().st_mode & 0o111, name
        assert any(line.startswith("exec ") for line in lines), name


def test_flower_refuses_to_start_without_basic_auth():
    env = {"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": ""}
    result = subprocess.run(
        [start_script("flower")], env=env, capture_output=True, text=True, timeout=10
    )
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_env_example_documents_every_setting():
    documented = set(env_file(ROOT / ".env.example"))
    required = settings_variables() | {"FLOWER_BASIC_AUTH"}
    required |= {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    assert required - documented == set()


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in settings_variables() if f"`{name}`" not in readme}
    assert missing == set()


def test_image_contains_every_local_app():
    dockerfile = (ROOT / "Dockerfile").read_text()
    local_apps = [app for app in settings.INSTALLED_APPS if (ROOT / app).is_dir()]
    for folder in [*local_apps, "project", "compose"]:
        assert f"COPY {folder}/ {folder}/" in dockerfile


# --- The start scripts, run outside Docker ------------------------------------------------------


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database next to the test settings' one, dropped afterwards."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the start scripts are tested against PostgreSQL")
    name = f"newsbeat_compose_{secrets.token_hex(4)}"
    server = {
        "host": db["HOST"] or "127.0.0.1",
        "port": db["PORT"] or 5432,
        "user": db["USER"],
        "password": db["PASSWORD"] or None,
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    auth = server["user"] + (f":{server['password']}" if server["password"] else "")
    yield f"postgres://{auth}@{server['host']}:{server['port']}/{name}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def service_env(database_url: str, broker, tmp_path: Path) -> dict[str, str]:
    """The environment of every app container: .env.example, pointed at local servers."""
    node = f"compose-{secrets.token_hex(4)}"
    return {
        **os.environ,
        **env_file(ROOT / ".env.example"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "FLOWER_BASIC_AUTH": f"operator:{secrets.token_urlsafe(12)}",
        # Docker sets HOSTNAME to the container's hostname, which %h in a node name expands to.
        "HOSTNAME": node,
        "WEB_HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(free_port()),
        "FLOWER_DB": str(tmp_path / "flower.db"),
        "BEAT_PIDFILE": str(tmp_path / "beat.pid"),
        "WORKER_CONCURRENCY": "1",
        "FETCH_CONCURRENCY": "2",
        "WEB_CONCURRENCY": "1",
    }


def status(process: Process, url: str) -> int | None:
    """The status `url` answers with, or None while nothing listens; fails if `process` died."""
    if process.popen.poll() is not None:
        raise AssertionError(f"{process.args} exited:\n{process.output()[-3000:]}")
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None


def periodic_job_names(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT name FROM django_celery_beat_periodictask").fetchall()
    return {name for (name,) in rows}


def consumed_queues(worker: Process) -> set[str]:
    """The queues a worker's start-up banner lists (`.> celery  exchange=celery(direct) ...`)."""
    return set(re.findall(r"\.> (\S+)\s+exchange=", worker.output()))


def assert_healthy(service: str, env: dict[str, str]) -> None:
    result = run_healthcheck(service, env)
    assert result.returncode == 0, f"{service} healthcheck failed:\n{result.stderr[-2000:]}"


@pytest.mark.integration
def test_start_scripts_bring_up_every_service(service_env, database_url, tmp_path):
    env = service_env
    web_url = f"http://127.0.0.1:{env['PORT']}"
    flower_url = f"http://127.0.0.1:{env['FLOWER_PORT']}"
    user, password = env["FLOWER_BASIC_AUTH"].split(":", 1)

    with ExitStack() as stack:

        def start(service: str) -> Process:
            log = tmp_path / f"{service}.log"
            return stack.enter_context(running([str(start_script(service))], log, env))

        # web migrates the empty database first; compose starts worker and beat after it.
        web = start("web")
        assert wait_for(lambda: status(web, f"{web_url}/health/live/"), timeout=90) == 200
        assert_healthy("web", env)

        worker, fetch_worker = start("worker"), start("fetch-worker")
        beat, flower = start("beat"), start("flower")

        worker.wait_for_output("ready.", timeout=60)
        assert_healthy("worker", env)
        assert consumed_queues(worker) == {"celery"}

        fetch_worker.wait_for_output("ready.", timeout=60)
        assert_healthy("fetch-worker", env)
        assert consumed_queues(fetch_worker) == {env["NEWSBEAT_FETCH_QUEUE"]}
        assert "concurrency: 2 (thread)" in fetch_worker.output()

        beat.wait_for_output("beat: Starting", timeout=60)
        jobs = set(settings.NEWSBEAT_PERIODIC_JOBS)
        wait_for(lambda: jobs <= periodic_job_names(database_url), timeout=30)
        assert_healthy("beat", env)

        assert wait_for(lambda: status(flower, f"{flower_url}/healthcheck"), timeout=60) == 200
        assert requests.get(f"{flower_url}/", timeout=5).status_code == 401
        assert requests.get(f"{flower_url}/", auth=(user, "wrong"), timeout=5).status_code == 401
        assert requests.get(f"{flower_url}/", auth=(user, password), timeout=5).status_code == 200
        assert_healthy("flower", env)

        health = requests.get(f"{web_url}/health/", timeout=10)
        assert health.status_code == 200, health.text
        assert set(health.json()["jobs"]) >= jobs

        for process in (beat, flower, web, worker, fetch_worker):
            process.signal(signal.SIGTERM)
            process.popen.wait(30)

    # A healthcheck that cannot fail proves nothing: with the services gone, each one fails.
    for service in APP_SERVICES:
        assert run_healthcheck(service, env).returncode != 0, service
