"""`make run`'s supervisor (project/run.py) as a user runs it: start everything, then Ctrl-C."""

import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import psutil
import pytest

from tests.processes import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration


def answers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def succeeded_jobs(db) -> set[str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            rows = conn.execute(
                "SELECT DISTINCT periodic_task_name FROM monitoring_taskexecution "
                "WHERE status = 'succeeded' AND periodic_task_name != ''"
            ).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return set()
    return {name for (name,) in rows}


def fetch_placements(db) -> set[tuple[str, str]]:
    """(worker name, queue) of every finished fetch_source: where the fetches ran."""
    with sqlite3.connect(db, timeout=5) as conn:
        rows = conn.execute(
            "SELECT DISTINCT substr(worker, 1, instr(worker, '@')), queue "
            "FROM monitoring_taskexecution "
            "WHERE task_name = 'pipeline.fetch_source' AND status != 'started'"
        ).fetchall()
    return set(rows)


def test_make_run_starts_everything_and_ctrl_c_stops_it_cleanly(tmp_path, monkeypatch):
    ports = {name: free_port() for name in ("WEB", "FLOWER", "FEEDS", "REDIS")}
    db = tmp_path / "newsbeat.sqlite3"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{db}",
        "NEWSBEAT_ADMIN_PASSWORD": "correct-horse-battery",
        **{f"NEWSBEAT_{name}_PORT": str(port) for name, port in ports.items()},
    }  # no REDIS_URL: the supervisor starts its own Redis
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [sys.executable, "-m", "project.run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = lambda: (tmp_path / "run.log").read_text(errors="replace")  # noqa: E731
    try:
        web = f"http://127.0.0.1:{ports['WEB']}"
        wait_for(lambda: answers(f"{web}/health/live/") == 200, timeout=90)
        wait_for(lambda: answers(f"http://127.0.0.1:{ports['FLOWER']}/") == 200, timeout=60)
        wait_for(lambda: succeeded_jobs(db) >= {"poll-news", "poll-stories"}, timeout=60)
        assert answers(f"http://127.0.0.1:{ports['FEEDS']}/") == 200
        # The polls fanned out to the fetch queue, which only the threads-pool worker consumes.
        wait_for(lambda: fetch_placements(db), timeout=60)
        assert fetch_placements(db) == {("fetch@", "fetch")}
        children = psutil.Process(run.pid).children(recursive=True)
        names = output()
        for prefix in ("redis  |", "web    |", "worker |", "fetch  |", "beat   |", "flower |"):
            assert prefix in names
        assert "concurrency: 8 (thread)" in names

        run.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert run.wait(120) == 0
    except BaseException:
        print(output()[-6000:])
        raise
    finally:
        if run.poll() is None:
            run.kill()
        log.close()

    assert [c.pid for c in children if c.is_running() and c.status() != "zombie"] == []
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    assert "worker | " in output()
    assert "stopped" in output().splitlines()[-1]
