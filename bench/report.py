"""The one table `make bench` prints, and its exit code."""

import math

from .common import Row

HEADER = ("benchmark", "figure", "reference", "ratio", "target", "result", "note")


def figure(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def result(row: Row) -> str:
    if row.passed is None:
        return "info"
    return "pass" if row.passed else "FAIL"


def table(rows: list[Row], seconds: float | None = None) -> str:
    """A Markdown table (readable in a terminal, pasted as is into bench/RESULTS.md)."""
    cells = [HEADER] + [
        (
            row.name,
            figure(row.value, row.unit),
            row.reference or "-",
            f"{row.ratio:.3f}" if row.ratio is not None else "-",
            row.target or "-",
            result(row),
            row.note,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    failed = sum(1 for row in rows if row.passed is False)
    summary = f"{len(rows)} figures, {failed} target(s) missed"
    if seconds is not None:
        summary += f", {seconds / 60:.1f} minutes"
    return "\n".join([*lines, "", summary])


def exit_code(rows: list[Row]) -> int:
    """1 when a target was missed, else 0."""
    return 1 if any(row.passed is False for row in rows) else 0
