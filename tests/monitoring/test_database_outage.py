"""PostgreSQL stops while a real worker runs tasks: tasks carry on, the audit catches up.

The test runs its own PostgreSQL server (initdb into a temporary folder) so that it can stop
and start it without disturbing the database the rest of the suite uses.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import psycopg
import pytest

from tests.processes import CELERY, ROOT, free_port, process_env, running, wait_for, worker_args

pytestmark = pytest.mark.integration

PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), None)


class OwnPostgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="newsbeat-pg-", dir="/tmp"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.pg(
            "initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def pg(self, tool: str, *args: str) -> None:
        # No pipes: the server pg_ctl starts would inherit them and keep run() waiting.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/tmp",
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "server.log")
        self.pg("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def rows(self, task_id: str) -> list[tuple]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(
                "SELECT status, result::text FROM monitoring_taskexecution WHERE task_id = %s",
                [task_id],
            ).fetchall()


@pytest.fixture
def postgres():
    if PG_BIN is None or os.geteuid() != 0:
        pytest.fail(
            "this test runs its own PostgreSQL server: it needs the server binaries and root"
        )
    server = OwnPostgres()
    server.start()
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_tasks_run_while_postgres_is_down_and_their_rows_are_written_when_it_returns(
    postgres, broker, tmp_path
):
    env = process_env(DATABASE_URL=postgres.url)
    subprocess.run([*CELERY[:1], "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    web_args = [CELERY[0], "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    with (
        running(worker_args("w1", "--concurrency=1"), tmp_path / "worker.log", env) as worker,
        running(web_args, tmp_path / "web.log", env),
    ):
        worker.wait_for_output("ready.", timeout=60)
        from tests import tasks

        postgres.stop()
        result = tasks.add.delay(20, 22)

        assert result.get(timeout=30) == 42  # the audit hook did not fail the task
        worker.wait_for_output("event=audit_spooled", timeout=10)
        wait_for(lambda: status_of(f"http://127.0.0.1:{port}/health/") == 503, timeout=30)

        postgres.start()
        # The next task this worker finishes writes what it had to keep aside.
        assert tasks.add.delay(1, 1).get(timeout=30) == 2
        rows = wait_for(lambda: postgres.rows(result.id), timeout=30)

    assert rows == [("succeeded", "42")]
    assert broker.llen("newsbeat:audit-spool") == 0
