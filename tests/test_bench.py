"""The benchmark harness (`make bench`) at a tiny size, so that it cannot rot unnoticed."""

import re
import subprocess
import sys

import pytest

from bench.common import Row, bench_database_url, percentile
from bench.report import exit_code, table
from tests.processes import ROOT, process_env

ROWS = [
    Row(
        "1 audit",
        800.0,
        "tasks/s",
        reference="820/s no hook",
        ratio=0.976,
        target=">= 0.90",
        passed=True,
    ),
    Row("3 ingest", 650.0, "entries/s"),
]


def cells(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_shows_figure_reference_ratio_target_and_result():
    text = table(ROWS, seconds=90)

    assert cells(text, "1 audit") == [
        "1 audit",
        "800 tasks/s",
        "820/s no hook",
        "0.976",
        ">= 0.90",
        "pass",
        "",
    ]
    assert cells(text, "3 ingest") == ["3 ingest", "650 entries/s", "-", "-", "-", "info", ""]
    assert text.endswith("2 figures, 0 target(s) missed, 1.5 minutes")


def test_exit_code_is_1_when_any_target_is_missed():
    missed = Row("5 retention", 0.5, "", ratio=0.5, target=">= 0.80", passed=False)

    assert exit_code(ROWS) == 0
    assert exit_code([*ROWS, missed]) == 1
    assert "FAIL" in table([*ROWS, missed])


def test_bench_runs_on_a_database_of_its_own():
    url = "postgres://postgres@127.0.0.1:5432/newsbeat"

    assert bench_database_url(url) == "postgres://postgres@127.0.0.1:5432/newsbeat_bench"
    with pytest.raises(SystemExit):
        bench_database_url("sqlite:///var/newsbeat.sqlite3")


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))

    assert percentile(values, 0.99) == 99
    assert percentile(values, 0.5) == 50
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.integration
@pytest.mark.django_db
def test_whole_harness_runs_at_a_tiny_size_and_prints_one_table(tmp_path):
    from tests.processes import test_database_url  # here: at module level pytest collects it

    env = process_env(DATABASE_URL=test_database_url())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.001",
            "--runs",
            "1",
            "--soak-seconds",
            "3",
            "--logs",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    output = done.stdout
    assert "| benchmark " in output, done.stderr[-3000:]
    for target in (
        "1 audit",
        "2 fan-out",
        "3 ingest",
        "3 matching",
        "4 read",
        "5 retention",
        "6 beat",
        "6 soak",
    ):
        assert f"| {target}" in output, f"no row for {target}:\n{output}"
    missed = int(re.search(r"(\d+) target\(s\) missed", output).group(1))
    assert missed == output.count("| FAIL ")
    assert done.returncode == (1 if missed else 0), done.stderr[-3000:]
