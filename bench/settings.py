"""Settings of the processes the benchmarks start: the project's, plus what a benchmark varies.

`BENCH_AUDIT` picks the audit of a worker, so that a figure and its reference run the same
worker side by side:

- `full`: the project's hook (monitoring/signals.py), as deployed;
- `off`: no hook at all, the reference the hook is measured against;
- `naive`: an ORM insert at `task_prerun` and an update at `task_postrun` (bench/naive.py);
- `results`: django-celery-results as the result backend, with `task_track_started`.

`BENCH_SYNCHRONOUS_COMMIT=1` makes the hook's final insert wait for the disk.
`BENCH_DB_REUSE=0` gives Celery's default connection handling (CELERY_DB_REUSE_MAX unset: the
Django fixup closes the connections before and after every task).
"""

from datetime import timedelta

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, env_bool, env_int, env_str

BENCH_AUDIT = env_str("BENCH_AUDIT", "full")
if BENCH_AUDIT not in ("full", "off", "naive", "results"):
    raise ValueError(f"BENCH_AUDIT={BENCH_AUDIT!r} is not one of full, off, naive, results")

# monitoring.signals.signals_connect() reads this: the reference worker runs without the hook.
NEWSBEAT_AUDIT = BENCH_AUDIT == "full"
NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT = env_bool("BENCH_SYNCHRONOUS_COMMIT", False)

# The bench database has django-celery-results' table whatever the variant, so that one
# `migrate` serves every worker.
INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_results"]
if BENCH_AUDIT == "results":
    CELERY_RESULT_BACKEND = "django-db"
    CELERY_TASK_TRACK_STARTED = True

if not env_bool("BENCH_DB_REUSE", True):
    del CELERY_DB_REUSE_MAX  # noqa: F821 - star-imported above

# The beat benchmark: beat schedules only BENCH_BEAT_JOBS jobs of bench.tick, every second.
BENCH_BEAT_JOBS = env_int("BENCH_BEAT_JOBS", 0)
if BENCH_BEAT_JOBS:
    NEWSBEAT_PERIODIC_JOBS = {
        f"bench-tick-{i}": {"task": "bench.tick", "every": timedelta(seconds=1)}
        for i in range(BENCH_BEAT_JOBS)
    }
