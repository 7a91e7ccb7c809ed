"""benchmarks/training_overhead.py at a tiny size, so that it never rots: a plain loop and the collaborative trainer
(alone in a swarm, with its coordinator) both train albert-tiny, and with --track swav the CPU preset's resnet-tiny on
the Tiny-ImageNet subset; the report holds samples/s and CPU per sample of every run and the ratios (and for SwAV the
bytes averaged per global step). Timings themselves are not asserted (not a timed test)."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.training_overhead import (
    BASELINE,
    COLLABORATIVE,
    PLAIN,
    PROCESS_KINDS,
    TINY_IMAGENET_TRAIN,
    analyse,
    averaged_bytes,
    cpu_between,
    process_tree_cpu,
    window_rate,
)
from collab.lab.swarm import REPO_ROOT

pytestmark = pytest.mark.timeout(300)
slow = pytest.mark.slow  # the test that runs the benchmark (30-90 s on 2 busy cores)


@pytest.fixture(scope="module")
def report(tmp_path_factory, albert_dataset, run_benchmark):
    return run_benchmark(tmp_path_factory.mktemp("training_overhead"), "training_overhead", [
        "--dataset_path", str(albert_dataset), "--target_batch_size", "32", "--warmup_global_steps", "1",
        "--timed_global_steps", "1", "--repeats", "1"], timeout=280)


@slow
def test_both_variants_train_and_the_ratio_is_reported(report):
    runs = {run["variant"]: run for run in report["runs"]}
    assert set(runs) == {PLAIN, COLLABORATIVE}
    assert runs[PLAIN]["samples"] == 32  # one LAMB step of the target batch
    # hivemind may end a global step a little before or after the target (its tracker also steps when its estimate
    # says the swarm must be there), so the trainer's window holds about, not exactly, the target batch
    for run in runs.values():
        assert run["samples"] > 0 and run["seconds"] > 0 and run["samples_per_second"] > 0
        # CPU is read when the journal shows a step (every 0.25 s): a window this tiny may read as 0, so only the
        # presence of finite numbers is checked (a missing or nan reading would be a bug in the accounting)
        assert math.isfinite(run["cpu_seconds"]["main"]) and math.isfinite(run["cpu_ms_per_sample"]["total"])
        per_kind = run["cpu_ms_per_sample"]
        assert per_kind["total"] == pytest.approx(sum(per_kind[kind] for kind in PROCESS_KINDS))
    assert runs[PLAIN]["cpu_seconds"]["p2pd"] == 0  # the plain loop runs no libp2p daemon
    ratios = report["result"]["ratios"][COLLABORATIVE]
    assert ratios["median_speed_ratio"] > 0 and math.isfinite(ratios["median_speed_ratio"])
    assert len(ratios["speed_ratios"]) == 1
    assert report["model_preset"] == "albert-tiny" and report["target_batch_size"] == 32
    assert report["samples_timed"] == 32 and report["machine"]["hivemind"] == "1.1.12"
    assert "averaged_bytes" not in report  # the ALBERT report is what it was


@pytest.fixture(scope="module")
def swav_report(tmp_path_factory, run_benchmark):
    if not TINY_IMAGENET_TRAIN.is_dir():  # as tests/swav/conftest.py (a skip is a failure in CI)
        pytest.skip(f"tiny-imagenet subset not found at {TINY_IMAGENET_TRAIN}")
    # swav/configs/cpu.json (32 images per pass) with 2 passes per LARS step; --name: the file run_benchmark reads
    return run_benchmark(tmp_path_factory.mktemp("training_overhead_swav"), "training_overhead", [
        "--track", "swav", "--target_batch_size", "64", "--warmup_global_steps", "1", "--timed_global_steps", "1",
        "--repeats", "1", "--name", "training_overhead"], timeout=280)


@slow
def test_swav_track_trains_both_variants_and_reports_the_averaged_bytes(swav_report):
    report = swav_report
    runs = {run["variant"]: run for run in report["runs"]}
    assert set(runs) == {PLAIN, COLLABORATIVE}
    assert runs[PLAIN]["samples"] == 64  # one LARS step of the target batch
    for run in runs.values():
        assert run["samples"] > 0 and run["samples_per_second"] > 0 and math.isfinite(run["cpu_seconds"]["main"])
    assert runs[PLAIN]["cpu_seconds"]["p2pd"] == 0
    assert "Plain loop (swav): 32 samples per pass x 2 passes per LARS step" in Path(runs[PLAIN]["log"]).read_text()
    ratios = report["result"]["ratios"][COLLABORATIVE]
    assert ratios["median_speed_ratio"] > 0 and math.isfinite(ratios["median_speed_ratio"])
    assert report["track"] == "swav" and report["settings"]["trainer_config"] == "swav/configs/cpu.json"
    assert report["model_preset"] == "resnet-tiny" and report["target_batch_size"] == 64
    assert report["settings"]["dataset_path"] is None  # the default: the Tiny-ImageNet subset
    # the run's preset (fp16) and the paper's ResNet-50 recipe (size-adaptive: fp16 below 2**16 + 1 values, 8-bit)
    tiny, resnet50 = report["averaged_bytes"]
    assert (tiny["model_preset"], tiny["compression"]) == ("resnet-tiny", "fp16")
    assert tiny["values_by_codec"] == {"Float16Compression": tiny["values"]}
    assert 2.0 < tiny["bytes_per_value"] < 2.2  # fp16 plus a protobuf header per part
    assert (resnet50["model_preset"], resnet50["compression"]) == ("resnet50", "size-adaptive")
    assert 23_000_000 < resnet50["gradient_values"] < 32_000_000 and resnet50["buffer_values"] > 0
    assert 1.0 < resnet50["bytes_per_value"] < 1.2
    assert "Bytes averaged per global step" in report["_markdown"]


def test_window_rate_counts_the_samples_between_two_steps():
    events = [dict(event="computed", time=0.5, samples=8), dict(event="step", time=1.0, step=1, samples_computed=32),
              dict(event="step", time=2.0, step=2, samples_computed=64),
              dict(event="step", time=5.0, step=3, samples_computed=96)]
    rate = window_rate(events, 1, 3)
    assert rate == dict(samples=64, seconds=4.0, samples_per_second=16.0, step_seconds=[1.0, 3.0])
    with pytest.raises(ValueError):
        window_rate(events, 1, 4)


def test_ratios_pair_each_variant_with_the_plain_run_of_its_repeat():
    def run(variant: str, repeat: int, speed: float, cpu: float) -> dict:
        return dict(variant=variant, repeat=repeat, samples_per_second=speed, step_seconds=[1.0],
                    cpu_ms_per_sample=dict(main=cpu, helpers=0.0, p2pd=0.0, total=cpu))

    runs = [run(PLAIN, 1, 100.0, 10.0), run(COLLABORATIVE, 1, 90.0, 11.0), run(BASELINE, 1, 50.0, 20.0),
            run(PLAIN, 2, 50.0, 10.0), run(COLLABORATIVE, 2, 40.0, 12.0), run(BASELINE, 2, 25.0, 16.0)]
    result = analyse(runs)
    assert result["ratios"][COLLABORATIVE]["speed_ratios"] == pytest.approx([0.9, 0.8])
    assert result["ratios"][COLLABORATIVE]["median_speed_ratio"] == pytest.approx(0.85)
    assert result["ratios"][BASELINE]["cpu_ratios"] == pytest.approx([2.0, 1.6])
    assert result["variants"][PLAIN]["samples_per_second"]["median"] == 75.0
    assert PLAIN not in result["ratios"]


def test_averaged_bytes_are_hivemind_parts_compressed_as_the_preset_says():
    import torch

    parameters = [torch.zeros(3, 4), torch.zeros(100_000)]  # the second is above size-adaptive's 8-bit threshold
    buffers = [torch.ones(16), torch.zeros(16)]
    plain = averaged_bytes(parameters, buffers, "none")
    assert (plain["gradient_tensors"], plain["buffer_tensors"]) == (2, 2)
    assert plain["values"] == 12 + 100_000 + 32 and plain["fp32_bytes"] == 4 * plain["values"]
    # 4 bytes per value, a few bytes of header per part; the 400 KB tensor is one part of hivemind's 512 KB
    assert plain["parts"] == 4 and 0 < plain["payload_bytes"] - plain["fp32_bytes"] < 4 * 100
    half = averaged_bytes(parameters, buffers, "fp16")
    assert 0 < half["payload_bytes"] - 2 * half["values"] < 4 * 100
    adaptive = averaged_bytes(parameters, buffers, "size-adaptive")
    assert adaptive["values_by_codec"] == {"Float16Compression": 12 + 32, "Uniform8BitQuantization": 100_000}
    assert 100_000 < adaptive["payload_bytes"] < 100_000 + 2 * 44 + 2000  # 1 byte per value, 256 x fp32 codebook
    # a butterfly all-reduce sends 2(n-1)/n of the payload per peer: 1x with 2 peers, 1.5x with 4
    assert adaptive["sent_per_peer_bytes"]["2"] == pytest.approx(adaptive["payload_bytes"])
    assert adaptive["sent_per_peer_bytes"]["4"] == pytest.approx(1.5 * adaptive["payload_bytes"])


def test_cpu_of_a_process_tree_is_read_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass\n"
                                                    "time.sleep(30)"])
    try:
        before = process_tree_cpu(child.pid)  # taken while the child is starting: its busy loop comes after
        for _ in range(200):
            if cpu_between(before, process_tree_cpu(child.pid))["main"] >= 0.2:
                break
            time.sleep(0.05)
        used = cpu_between(before, process_tree_cpu(child.pid))
        assert used["main"] >= 0.2 and used["total"] == pytest.approx(used["main"] + used["helpers"] + used["p2pd"])
    finally:
        child.kill()
        child.wait()


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/training_overhead.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0
    for flag in ("--track", "--model_preset", "--timed_global_steps", "--repeats", "--baseline_checkout",
                 "--torch_threads", "--results_dir"):
        assert flag in done.stdout
