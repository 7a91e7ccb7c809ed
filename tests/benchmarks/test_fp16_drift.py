"""benchmarks/fp16_drift.py at a tiny size, so that it never rots: every variant runs, the report has the per-step
gaps, and what the committed run shows holds from the first steps on: without compression the peers stay at float
rounding, at fp16 they drift, and the kit's fp16 grid (collab.optimizer.RoleGradientAverager) narrows the gap."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

STEPS = 6


@pytest.fixture(scope="module")
def report(tmp_path_factory, albert_dataset, run_benchmark):
    return run_benchmark(tmp_path_factory.mktemp("fp16_drift"), "fp16_drift", [
        "--dataset_path", str(albert_dataset), "--steps", str(STEPS), "--seeds", "0"], timeout=280)


def test_every_variant_reports_every_step(report):
    assert [(run["variant"], run["seed"]) for run in report["runs"]] == [("none", 0), ("fp16", 0), ("fp16-grid", 0)]
    for run in report["runs"]:
        assert [row["step"] for row in run["rows"]] == list(range(1, STEPS + 1))
        assert all(row["largest_move"] > 0 for row in run["rows"][1:])  # the warm-up's first step has rate 0
    assert report["machine"] and "| fp16-grid | 0 |" in report["_markdown"]


def test_the_fp16_grid_narrows_the_gap_that_fp16_leaves(report):
    final_gap = {run["variant"]: run["rows"][-1]["gap"] for run in report["runs"]}
    assert final_gap["none"] < 1e-5
    assert final_gap["fp16"] > 1e-4  # each peer kept its own residual: a real drift
    assert final_gap["fp16-grid"] < final_gap["fp16"] / 1.5
