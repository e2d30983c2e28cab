"""`make bench`: run every benchmark of issue 6 and print one table; exit 1 if a target is missed.

    python -m bench                       # full size: about 15 minutes on 2 cores
    python -m bench --scale 0.01 --runs 1 --soak-seconds 5   # the whole harness, tiny
    python -m bench --only audit,fanout   # some benchmarks
    python -m bench --soak-seconds 3600   # the one-hour beat and memory soak

Runs on DATABASE_URL's server in a database of its own (`<name>_bench`, created and migrated
here) and on REDIS_URL's database, which it empties.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = ("audit", "fanout", "ingest", "read", "retention", "beat")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every size by this (default 1)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median taken")
    parser.add_argument(
        "--soak-seconds", type=float, default=60, help="beat and memory soak length"
    )
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated: {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--logs", type=Path, help="keep worker and beat logs in this folder")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.scale <= 0 or args.runs < 1 or args.soak_seconds <= 0:
        parser.error("--scale and --soak-seconds must be positive, --runs at least 1")
    return args


def setup() -> None:
    """Point this process and the ones it starts at the bench database; migrate it."""
    from .common import bench_database_url, create_database

    url = bench_database_url(os.environ.get("DATABASE_URL", ""))
    create_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ.setdefault("BENCH_AUDIT", "full")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    # The pipeline and the hooks log a line per feed and per task; progress goes to stderr.
    logging.disable(logging.INFO)


def read_side(rows: int) -> list:
    """Target 4 through bench/read_side.py (its own module: the read side's owner keeps it)."""
    from .common import Row, log

    try:
        from . import read_side
    except ModuleNotFoundError as error:
        if error.name != "bench.read_side":
            raise
        return [Row("4 read side", None, "", note="bench/read_side.py is not there yet")]
    log("read side: %d rows", rows)
    return [
        Row(
            f"4 {row['name']}",
            row["value"],
            row["unit"],
            target=f"< {row['target']} {row['unit']}" if row.get("target") is not None else "",
            passed=row["value"] < row["target"] if row.get("target") is not None else None,
        )
        for row in read_side.run(rows)
    ]


def scaled(size: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(size * scale))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup()
    import redis
    from django.conf import settings

    from . import report
    from .common import log

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="newsbeat-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    log(
        "bench: database %s, redis %s, logs in %s",
        settings.DATABASES["default"]["NAME"],
        settings.CELERY_BROKER_URL,
        logs,
    )
    started = time.monotonic()
    rows = []
    if "audit" in args.only:
        from . import audit

        tasks = scaled(20_000, args.scale, 50)
        rows += audit.run(logs, tasks, max(50, tasks // 20), args.runs)
        rows.append(audit.guard_cost())
    if "fanout" in args.only:
        from . import fanout

        rows += fanout.run(logs, scaled(1000, args.scale, 10), args.runs)
    if "ingest" in args.only:
        from . import ingest

        rows += ingest.run(scaled(100_000, args.scale, 150), args.runs)
    if "read" in args.only:
        rows += read_side(scaled(10_000_000, args.scale, 10_000))
    if "retention" in args.only:
        from . import retention

        rows += retention.run(scaled(1_000_000, args.scale, 1000), args.runs)
    if "beat" in args.only:
        from . import beat

        rows += beat.run(logs, args.soak_seconds)
    broker.flushdb()
    print(report.table(rows, time.monotonic() - started))
    return report.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
