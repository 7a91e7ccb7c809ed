"""What every benchmark smoke test does: run the script at a tiny size into a temporary folder, check that it
wrote its JSON, markdown table and plot, and hand back the JSON (and the table)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from collab.lab.swarm import REPO_ROOT


@pytest.fixture(scope="session")
def run_benchmark() -> Callable[..., dict]:
    return _run_benchmark


def _run_benchmark(root: Path, name: str, args: Sequence[str], timeout: float) -> dict:
    """Run benchmarks/<name>.py with `args`; returns its JSON report plus `_markdown`, its table."""
    results = root / "results"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / f"benchmarks/{name}.py"), *args, "--output_dir", str(root / "run"),
         "--results_dir", str(results)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for suffix in ("md", "png"):
        assert (results / f"{name}.{suffix}").stat().st_size > 0
    return dict(json.loads((results / f"{name}.json").read_text()), _markdown=(results / f"{name}.md").read_text())
