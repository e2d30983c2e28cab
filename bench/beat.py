"""Target 6, beat precision and memory: celery beat (the project's DatabaseScheduler) with JOBS
jobs every second, a prefork worker running them, for a soak of `seconds`.

Lateness: each run of bench.tick notes when it started and its `periodic_slot` header, the
`last_run_at` of the run before it (monitoring/beat.py); the run was due one interval later.
Measured at the worker, so it includes the trip through Redis: an upper bound of beat's own
dispatch lateness.

Memory: resident set of the worker (main process and pool) and of beat, sampled every few
seconds; growth is the median of the last tenth of the samples over the median of the first
tenth after a warm-up.
"""

import json
import time
from datetime import datetime
from pathlib import Path

import redis
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from tests.processes import running

from .common import CELERY, Row, log, median, percentile, process_env, process_rss, worker
from .tasks import TICKS_KEY

JOBS = 5
INTERVAL = 1.0
SAMPLE_SECONDS = 2.0


def lateness(records: list[dict], since: float) -> list[float]:
    """Seconds each run started after it was due. A job's first run is left out: it follows no
    run of its own (django-celery-beat dates a new job's last run 30 years back)."""
    late = []
    for record in records:
        if record["slot"]:
            due = datetime.fromisoformat(record["slot"]).timestamp() + INTERVAL
            if due >= since:
                late.append(record["started"] - due)
    return late


def growth(samples: list[int], warmup: int) -> float:
    """Relative growth from the first tenth to the last tenth of the samples after warm-up."""
    kept = samples[warmup:] or samples
    tenth = max(1, len(kept) // 10)
    return median(kept[-tenth:]) / median(kept[:tenth]) - 1


def run(logs: Path, seconds: float) -> list[Row]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(TICKS_KEY)
    PeriodicTask.objects.all().delete()  # beat syncs the bench's jobs only (BENCH_BEAT_JOBS)
    beat_args = [*CELERY, "beat", "--loglevel=INFO", "--pidfile="]
    env = process_env(BENCH_BEAT_JOBS=str(JOBS))
    worker_rss, beat_rss = [], []
    since = time.time()
    with (
        worker(logs, "beat-worker", "celery", "--concurrency=2") as the_worker,
        running(beat_args, logs / "beat.log", env) as beat,
    ):
        beat.wait_for_output("beat: Starting", timeout=60)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(SAMPLE_SECONDS, max(0.0, deadline - time.monotonic())))
            worker_rss.append(process_rss(the_worker))
            beat_rss.append(process_rss(beat))
    records = [json.loads(raw) for raw in client.lrange(TICKS_KEY, 0, -1)]
    client.delete(TICKS_KEY)
    PeriodicTask.objects.all().delete()
    late = lateness(records, since)
    expected = int(seconds / INTERVAL) * JOBS
    warmup = min(int(30 / SAMPLE_SECONDS), len(worker_rss) // 5)
    p99 = percentile(late, 0.99) if late else float("nan")
    log(
        "beat: %d runs of %d expected, lateness p50 %.3f s p99 %.3f s max %.3f s",
        len(records),
        expected,
        median(late) if late else float("nan"),
        p99,
        max(late) if late else float("nan"),
    )
    soak = f"{seconds:.0f} s soak, {JOBS} jobs every {INTERVAL:.0f} s"
    return [
        Row(
            "6 beat: lateness of a run after its slot, p99",
            p99,
            "s",
            reference=f"p50 {median(late) if late else float('nan'):.3f} s",
            target="< 1 s",
            passed=bool(late) and p99 < 1 and len(records) >= 0.9 * expected,
            note=f"{len(records)} runs of {expected} due; {soak}",
        ),
        memory_row("worker", worker_rss, warmup, soak),
        memory_row("beat", beat_rss, warmup, soak),
    ]


def memory_row(name: str, rss: list[int], warmup: int, soak: str) -> Row:
    """Growth of a process's memory over the soak (first against last tenth after warm-up)."""
    grew = growth(rss, warmup)
    return Row(
        f"6 soak: {name} memory growth",
        grew * 100,
        "%",
        reference=f"{rss[warmup] / 2**20:.0f} MiB at start" if rss else "-",
        target="<= 10 %",
        passed=grew <= 0.10,
        note=f"{rss[-1] / 2**20:.0f} MiB at end; {soak}" if rss else soak,
    )
