"""benchmarks/joining.py at a tiny size (albert-tiny), so that it never rots: a joiner downloads the donor's state
through the project's own path (SwarmOptimizer.load_state_from_peers), the state arrives bit for bit, a join moves
the state and nothing else (no gradient averager's buffers, which hivemind's Optimizer also downloads), and the
report holds bytes, rates and the TCP comparison. Timings themselves are not asserted (not a timed test)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from collab.lab.swarm import REPO_ROOT

pytestmark = pytest.mark.timeout(300)
slow = pytest.mark.slow  # the tests that run the benchmark (15-25 s on 2 cores)


@pytest.fixture(scope="module")
def report(tmp_path_factory, run_benchmark):
    return run_benchmark(tmp_path_factory.mktemp("joining"), "joining", [
        "--model_preset", "albert-tiny", "--vocab_size", "2000", "--downloads", "2", "--transfers", "2"], timeout=240)


@slow
def test_every_download_delivers_the_donors_state(report):
    downloads = report["raw"]["joiner"]["downloads"]
    assert len(downloads) == 2
    assert all(d["loaded"] and d["state_matches_donor"] and d["epoch"] == report["raw"]["donor"]["epoch"]
               for d in downloads)
    assert all(0 < d["state_s"] <= d["state_load_s"] <= d["total_s"] for d in downloads)


@slow
def test_a_join_moves_the_state_and_nothing_else(report):
    """The project skips hivemind's download of the gradient averager's buffers: each join is exactly one download,
    by the state averager, of exactly the state's bytes (this fails if the gradient download comes back)."""
    state_bytes = report["result"]["state_bytes"]
    for d in report["raw"]["joiner"]["downloads"]:
        assert (d["state_downloads"], d["gradient_downloads"], d["other_downloads"]) == (1, 0, 0)
        assert d["state_received_bytes"] == d["received_bytes"] == state_bytes
        assert d["gradient_received_bytes"] == 0
        assert d["interface_rx_bytes"] is None  # loopback: not counted
    result = report["result"]
    assert result["every_join_moved_the_state_only"] and result["gradient_downloads"] == 0
    assert result["join_bytes"] == state_bytes
    markdown = report["_markdown"]
    assert "downloads, all joins | 0 |" in markdown
    assert "| state arrived bit for bit, every download | yes |" in markdown


@slow
def test_bytes_are_parameters_plus_two_lamb_moments_in_fp32(report):
    result = report["result"]
    assert result["state_bytes"] == 3 * 4 * result["parameters"]
    assert result["gradient_buffer_bytes"] == 4 * result["parameters"]  # what a join no longer downloads


@slow
def test_rates_and_the_tcp_comparison_are_reported(report):
    result = report["result"]
    assert result["download_rate_mb_s"] > 0 and result["tcp_rate_mb_s"] > 0 and result["ratio_to_tcp"] > 0
    assert report["raw"]["tcp"]["nbytes"] == result["join_bytes"] == result["state_bytes"]
    assert report["machine"]["torch"] and report["settings"]["bandwidth_mbit"] is None


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/joining.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0
    for flag in ("--model_preset", "--downloads", "--transfers", "--bandwidth_mbit", "--results_dir"):
        assert flag in done.stdout
