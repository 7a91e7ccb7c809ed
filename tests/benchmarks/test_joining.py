"""benchmarks/joining.py at a tiny size (albert-tiny), so that it never rots: a joiner downloads the donor's state
through the project's own path, the state arrives bit for bit, and the report holds bytes, rates and the TCP
comparison. Timings themselves are not asserted (not a timed test)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collab.swarm import REPO_ROOT

pytestmark = pytest.mark.timeout(300)
slow = pytest.mark.slow  # the tests that run the benchmark (15-25 s on 2 cores)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("joining")
    results = root / "results"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks/joining.py"), "--model_preset", "albert-tiny", "--vocab_size",
         "2000", "--downloads", "2", "--transfers", "2", "--output_dir", str(root / "run"), "--results_dir",
         str(results)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for suffix in ("md", "png"):
        assert (results / f"joining.{suffix}").stat().st_size > 0
    return json.loads((results / "joining.json").read_text())


@slow
def test_every_download_delivers_the_donors_state(report):
    downloads = report["raw"]["joiner"]["downloads"]
    assert len(downloads) == 2
    assert all(d["loaded"] and d["state_matches_donor"] and d["epoch"] == report["raw"]["donor"]["epoch"]
               for d in downloads)
    assert all(d["total_s"] > 0 and d["state_s"] > 0 and d["gradients_s"] > 0 for d in downloads)


@slow
def test_bytes_are_parameters_plus_two_lamb_moments_in_fp32(report):
    result = report["result"]
    assert result["state_bytes"] == 3 * 4 * result["parameters"]
    assert result["gradient_bytes"] == 4 * result["parameters"]
    assert result["join_bytes"] == result["state_bytes"] + result["gradient_bytes"]


@slow
def test_rates_and_the_tcp_comparison_are_reported(report):
    result = report["result"]
    assert result["download_rate_mb_s"] > 0 and result["tcp_rate_mb_s"] > 0 and result["ratio_to_tcp"] > 0
    assert report["raw"]["tcp"]["nbytes"] == result["join_bytes"]
    assert report["machine"]["torch"] and report["settings"]["bandwidth_mbit"] is None


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/joining.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0
    for flag in ("--model_preset", "--downloads", "--transfers", "--bandwidth_mbit", "--results_dir"):
        assert flag in done.stdout
