"""`make audit` (.ci/audit.py): a known vulnerability fails unless excepted with a reason; an audit
that could not be done is reported, and fails only where the network is expected to work."""

import importlib.util
import subprocess

import pytest

from tests.processes import ROOT

spec = importlib.util.spec_from_file_location("audit", ROOT / ".ci" / "audit.py")
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)

CLEAN_REPORT = {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": []}]}
VULNERABLE_REPORT = {
    "dependencies": [
        {"name": "django", "version": "5.2.19", "vulns": []},
        {
            "name": "requests",
            "version": "2.0.0",
            "vulns": [{"id": "PYSEC-2023-74", "fix_versions": ["2.31.0"], "aliases": []}],
        },
    ],
    "fixes": [],
}
SKIPPED_REPORT = {
    "dependencies": [
        {"name": "django", "skip_reason": "Dependency not found on PyPI and could not be audited"}
    ]
}


def test_a_known_vulnerability_fails_the_audit_and_names_package_and_id():
    status, lines = audit.judge(VULNERABLE_REPORT)

    assert status == audit.FOUND
    assert "requests 2.0.0: PYSEC-2023-74 (fixed in 2.31.0)" in lines


def test_a_clean_report_passes():
    assert audit.judge(CLEAN_REPORT)[0] == audit.CLEAN


@pytest.mark.parametrize("report", [None, SKIPPED_REPORT], ids=["no-report", "skipped"])
def test_an_audit_that_could_not_be_done_is_not_a_pass(report):
    assert audit.judge(report)[0] == audit.UNAUDITED


def test_exceptions_need_a_reason():
    text = "# comment\n\nPYSEC-2023-74  # only used for the test server (issue 9)\n"

    assert audit.read_ignores(text) == {"PYSEC-2023-74": "only used for the test server (issue 9)"}
    with pytest.raises(audit.BadIgnoreFile, match="line 1"):
        audit.read_ignores("GHSA-xxxx-yyyy-zzzz\n")


def test_the_exceptions_are_handed_to_pip_audit(monkeypatch, tmp_path):
    seen = []

    def run(args, **kwargs):
        seen.append(args)
        return subprocess.CompletedProcess(args, 1, "", "network unreachable")

    monkeypatch.setattr(audit.subprocess, "run", run)

    audit.run_pip_audit({"PYSEC-2023-74": "reason"}, tmp_path / "report.json")

    [args] = seen
    assert args[args.index("--ignore-vuln") + 1] == "PYSEC-2023-74"
    assert {"--no-deps", "--disable-pip"} <= set(args)


@pytest.mark.parametrize(
    ("report", "allow_offline", "status"),
    [
        (VULNERABLE_REPORT, True, 1),
        (VULNERABLE_REPORT, False, 1),
        (None, True, 0),
        (None, False, 3),
        (SKIPPED_REPORT, True, 0),
        (CLEAN_REPORT, False, 0),
    ],
)
def test_only_a_finding_fails_ci_which_allows_offline_runs(
    monkeypatch, report, allow_offline, status
):
    monkeypatch.setattr(audit, "run_pip_audit", lambda ignores, output: report)

    assert audit.main(["--allow-offline"] if allow_offline else []) == status
