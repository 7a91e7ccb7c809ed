"""Shared by every folder of tests: a small ALBERT dataset built once per session (the swarm and chaos tests use it),
and the CI rule that no test may be skipped there.

The repository root is `collab.lab.swarm.REPO_ROOT` (tests import it from there: a tests/ folder without
__init__.py has several modules named `conftest`, so importing this one by name is not reliable).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collab.lab.swarm import REPO_ROOT


def in_ci() -> bool:
    """CI runs `bash .ci/run` with CI=true, as root, with ../shared present: every skip condition is met there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """In CI a skipped test fails, with its skip reason: a skip there is a test that never ran while the run looks
    green. An expected failure (xfail) is not a skip."""
    report = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run (CI={os.environ['CI']}): {_skip_reason(report)}"
    return report


_SKIPPED_MODULES: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped as a whole (pytest.skip(allow_module_level=True), importorskip) is remembered instead: failing
    its collection would stop the whole run before any test ran."""
    if report.skipped and in_ci():
        _SKIPPED_MODULES.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_terminal_summary(terminalreporter) -> None:
    if _SKIPPED_MODULES:
        terminalreporter.section("modules skipped in CI, where every test must run", red=True)
        for line in _SKIPPED_MODULES:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED_MODULES and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def albert_dataset(tmp_path_factory) -> Path:
    """A small SOP dataset from the built-in corpus, built once per session with the real CLI."""
    path = tmp_path_factory.mktemp("albert_data") / "dataset"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "albert/tokenize_wikitext103.py"), "--builtin_corpus", "--builtin_articles",
         "200", "--tokenizer_name", "none", "--vocab_size", "2000", "--max_seq_length", "128", "--output_path",
         str(path)], check=True, capture_output=True, timeout=300,
    )
    return path
