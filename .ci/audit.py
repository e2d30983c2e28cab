"""Audit the pinned production requirements for known vulnerabilities (`make audit`, `.ci/run`).

    python .ci/audit.py [--allow-offline]

Runs pip-audit on requirements/base.txt and requirements/prod.txt, as pinned (no resolution, no
install). A known vulnerability fails the audit unless requirements/audit-ignore.txt lists its
id with a reason, one per line:

    PYSEC-2024-1  # only in the admin's password reset, which we do not route (issue 12)

Exit status: 0 audited and clean; 1 a vulnerability without an exception, or an exception
without a reason; 3 the audit could not be done: the vulnerability service did not answer, or did
not know some of the packages (pip-audit reports those as skipped and would exit 0). CI passes
--allow-offline, which turns 3 into a warning and 0: its machines may reach only the package
index, and a network failure is not a finding. A found vulnerability still fails CI.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [ROOT / "requirements" / "base.txt", ROOT / "requirements" / "prod.txt"]
IGNORE_FILE = ROOT / "requirements" / "audit-ignore.txt"
CLEAN, FOUND, UNAUDITED = 0, 1, 3
SHOWN_SKIPS = 3
# A network that hangs instead of refusing must not hold CI for long.
TIMEOUT_SECONDS = 300
_IGNORE_LINE = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9._:-]*)\s+#\s*(?P<reason>\S.*)$")


class BadIgnoreFile(Exception):
    pass


def read_ignores(text: str) -> dict[str, str]:
    """Vulnerability id -> reason. Raises BadIgnoreFile for a line without a reason."""
    ignores = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _IGNORE_LINE.match(line)
        if match is None:
            raise BadIgnoreFile(f"{IGNORE_FILE.name} line {number}: {line!r} is not 'ID  # reason'")
        ignores[match["id"]] = match["reason"]
    return ignores


def judge(report: dict | None) -> tuple[int, list[str]]:
    """The exit status and the lines to print for a pip-audit JSON report (None: none written).

    pip-audit has already dropped the ignored ids from the report.
    """
    if report is None:
        return UNAUDITED, ["the vulnerability service could not be reached"]
    dependencies = report.get("dependencies", [])
    found = [
        f"{dep['name']} {dep['version']}: {vuln['id']}"
        f" (fixed in {', '.join(vuln.get('fix_versions') or []) or 'no release yet'})"
        for dep in dependencies
        for vuln in dep.get("vulns", [])
    ]
    if found:
        return FOUND, ["known vulnerabilities:", *found]
    skipped = [
        f"{dep['name']}: {dep['skip_reason']}" for dep in dependencies if "skip_reason" in dep
    ]
    if skipped:
        more = [f"... and {len(skipped) - SHOWN_SKIPS} more"] if len(skipped) > SHOWN_SKIPS else []
        return UNAUDITED, [
            f"{len(skipped)} of {len(dependencies)} packages not audited, for example:",
            *skipped[:SHOWN_SKIPS],
            *more,
        ]
    return CLEAN, [f"{len(dependencies)} packages audited, no known vulnerabilities"]


def run_pip_audit(ignores: dict[str, str], output: Path) -> dict | None:
    args = [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "--format", "json"]
    args += ["--progress-spinner", "off", "--timeout", "30", "--output", str(output)]
    for requirements in REQUIREMENTS:
        args += ["--requirement", str(requirements)]
    for vuln_id in ignores:
        args += ["--ignore-vuln", vuln_id]
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        print(f"audit: pip-audit took over {TIMEOUT_SECONDS} s; stopped", file=sys.stderr)
        return None
    try:
        return json.loads(output.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        # No report: pip-audit failed before auditing (a network error is the usual cause).
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit exited {result.returncode}: {last}", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    allow_offline = "--allow-offline" in argv
    try:
        ignores = read_ignores(IGNORE_FILE.read_text() if IGNORE_FILE.exists() else "")
    except BadIgnoreFile as error:
        print(f"audit: {error}", file=sys.stderr)
        return FOUND
    with tempfile.TemporaryDirectory() as tmp:
        status, lines = judge(run_pip_audit(ignores, Path(tmp) / "report.json"))
    for line in lines:
        print(f"audit: {line}", file=sys.stderr if status else sys.stdout)
    if ignores:
        print(f"audit: {len(ignores)} exception(s) in {IGNORE_FILE.name}: {', '.join(ignores)}")
    if status == UNAUDITED and allow_offline:
        print("audit: WARNING: could not audit; not failing (--allow-offline)", file=sys.stderr)
        return CLEAN
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
