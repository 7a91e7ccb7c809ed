"""A real SwAV swarm on loopback, at the CPU preset (swav/configs/cpu.json): coordinator, auxiliary peer and two
trainers (one in client mode), each its own process, on the Tiny-ImageNet subset.

One swarm serves every assertion: during training the trainers hold one model (parameters and BatchNorm
statistics) after every global step; the queue switches on at the same global step on both; peers with bad input
fail with one line while the swarm goes on; the coordinator records the steps and checkpoints a state that
swav/evaluate.py loads and evaluates.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from collab.journal import JOURNAL_FILE, read_journal
from collab.lab.one_model import one_model_report
from collab.lab.swarm import REPO_ROOT, LocalSwarm, assert_one_line_error
from collab.store import read_store
from swav import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = str(REPO_ROOT / "swav/configs/cpu.json")
PRESET = json.loads(Path(CONFIG).read_text())
MAX_STEPS = 20
QUEUE_START_STEP = 5
SEED = 42  # every peer's initial weights


def swarm_flags() -> list[str]:
    return ["--config", CONFIG, "--run_id", "swav_test", "--host_maddrs", "/ip4/127.0.0.1/tcp/0",
            "--max_steps", str(MAX_STEPS), "--total_steps", str(MAX_STEPS), "--queue_start_step",
            str(QUEUE_START_STEP), "--queue_length", "64", "--seed", str(SEED),
            # a global step of several seconds (32 crops of 6 per pass take ~0.3 s): both trainers contribute to
            # every step; with a step of ~1 s a trainer that starts later only ever downloads the state
            "--target_batch_size", "1024",
            "--matchmaking_time", "3", "--min_refresh_period", "0.3", "--default_refresh_period", "1",
            "--max_refresh_period", "2", "--metadata_expiration", "20", "--request_timeout", "1"]


def image_folder_with_a_corrupt_image(source: Path, target: Path) -> Path:
    """A copy (links) of an image folder with one file of garbage bytes among the real photos."""
    for class_dir in sorted(source.iterdir()):
        if class_dir.is_dir():
            (target / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir()):
                (target / class_dir.name / image.name).symlink_to(image)
    first_class = sorted(path for path in target.iterdir())[0]
    (first_class / "corrupt_0.JPEG").write_bytes(b"this is not a JPEG" * 40)
    return target


def run_bad_peer(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "swav/run_trainer.py"), *args], capture_output=True,
                          text=True, timeout=180, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def swarm_run(tmp_path_factory, tiny_imagenet):
    root = tmp_path_factory.mktemp("swav_swarm")
    common = swarm_flags()
    with_corrupt = image_folder_with_a_corrupt_image(tiny_imagenet / "train", root / "train_with_corrupt")
    (root / "empty").mkdir()
    bad_results = {}
    with LocalSwarm(root / "logs") as swarm:
        coordinator = swarm.start("coordinator", "swav/run_first_peer.py", common + [
            "--monitor_output_dir", str(root / "coordinator"), "--identity_path", str(root / "coordinator.id"),
            "--refresh_period", "0.5", "--save_checkpoint_step_interval", "5", "--wandb_mode", "offline"])
        initial_peers = swarm.wait_for_file(root / "coordinator/initial_peers.txt", 180, watch=[coordinator]).split()
        swarm.start("aux", "swav/run_aux.py", common + initial_peers)
        trainers = [
            swarm.start("trainer-1", "swav/run_trainer.py", common + initial_peers + [
                "--dataset_path", str(tiny_imagenet / "train"), "--output_dir", str(root / "trainer-1")]),
            swarm.start("trainer-2", "swav/run_trainer.py", common + initial_peers + [
                "--dataset_path", str(with_corrupt), "--output_dir", str(root / "trainer-2"), "--client_mode"]),
        ]
        store = root / "coordinator/metrics.sqlite"
        swarm.wait_until(lambda: store.exists() and len(read_store(store)["global_steps"]) >= 1, 300,
                         "the first global step", watch=[coordinator, *trainers])
        join = common + initial_peers + ["--output_dir", str(root / "bad")]
        bad_inputs = {
            "missing image folder": join + ["--dataset_path", str(root / "no-such-folder")],
            "empty image folder": join + ["--dataset_path", str(root / "empty")],
            "different crops": join + ["--dataset_path", str(tiny_imagenet / "train"), "--size_crops", "48", "24"],
            "different model": join + ["--dataset_path", str(tiny_imagenet / "train"), "--num_prototypes", "32"],
        }
        for name, args in bad_inputs.items():
            bad_results[name] = run_bad_peer(args)
        swarm.wait_until(lambda: not any(t.alive for t in trainers), 600, "trainers to finish", watch=[coordinator])
        swarm.stop(coordinator)
    journals = {trainer.name: read_journal(root / trainer.name / JOURNAL_FILE) for trainer in trainers}
    return dict(root=root, trainers=trainers, bad=bad_results, store=read_store(store), journals=journals)


def test_trainers_finish_cleanly(swarm_run):
    for trainer in swarm_run["trainers"]:
        assert trainer.popen.returncode == 0, trainer.log_tail()
        assert "Traceback" not in trainer.log_text(), trainer.name


def test_trainers_hold_one_model_with_its_batchnorm_statistics_after_every_step(swarm_run):
    """Every pair of trainers at every step both journaled, before the end-of-run agreement, within the kit's bound
    (collab.lab.one_model); the journal's probe covers the BatchNorm running statistics as well as the weights."""
    report = one_model_report(swarm_run["journals"])
    assert report.held, f"trainers apart beyond the bound: {report.violations[:5]}"
    compared = {pair["step"] for pair in report.pairs}
    assert len(compared) >= MAX_STEPS // 2, f"trainers were compared at only {len(compared)} steps"
    averaged = {event["step"] for events in swarm_run["journals"].values() for event in events
                if event["event"] == "step" and event["outcome"] == "averaged" and event["trainers_averaged"] == 2}
    assert len(averaged) >= MAX_STEPS // 2, f"the two trainers averaged together at only {sorted(averaged)}"


def test_the_coordinator_holds_the_averaged_batchnorm_statistics(swarm_run):
    """The coordinator never runs a forward pass: statistics other than BatchNorm's initial 0 and 1 in its
    checkpoint came from the averaging rounds."""
    checkpoints = swarm_run["store"]["checkpoints"]
    assert checkpoints, "the coordinator saved no checkpoint"
    weights = load_file(str(Path(checkpoints[-1]["path"]) / "model.safetensors"))
    means = [value for name, value in weights.items() if name.endswith("running_mean")]
    variances = [value for name, value in weights.items() if name.endswith("running_var")]
    assert means and all(mean.abs().max() > 0 for mean in means)
    assert all((variance - 1).abs().max() > 0 for variance in variances)


def test_the_queue_switches_on_at_the_same_global_step_on_every_trainer(swarm_run):
    steps = {}
    for trainer in swarm_run["trainers"]:
        found = re.findall(r"Global step (\d+): the embedding queue is on", trainer.log_text())
        assert found, f"{trainer.name} never switched its queue on"
        steps[trainer.name] = int(found[0])
    # each switches on at its first local step of a global step >= the threshold (it may join that step late)
    assert all(QUEUE_START_STEP <= step <= QUEUE_START_STEP + 1 for step in steps.values()), steps


def test_an_unreadable_image_is_skipped_with_one_warning(swarm_run):
    log = next(t for t in swarm_run["trainers"] if t.name == "trainer-2").log_text()
    warnings = [line for line in log.splitlines() if "corrupt_0.JPEG" in line]
    assert len(warnings) == 1, warnings
    assert "Traceback" not in log


def test_the_coordinator_records_steps_and_its_checkpoint_evaluates(swarm_run, tiny_imagenet):
    store = swarm_run["store"]
    assert len(store["global_steps"]) >= MAX_STEPS - 3
    assert store["checkpoints"][-1]["step"] >= MAX_STEPS - 5
    data = ["--train_dir", str(tiny_imagenet / "train"), "--val_dir", str(tiny_imagenet / "val"),
            "--image_size", "32", "--linear_epochs", "10", "--num_workers", "0"]
    results = evaluate.main(["--checkpoint", store["checkpoints"][-1]["path"], *data])
    assert f"step-{store['checkpoints'][-1]['step']}" in results["model"]
    assert 0 < results["knn_top1"] <= 100 and 0 < results["linear_top1"] <= 100
    assert results["train_images"] == 1500 and results["val_images"] == 500


@pytest.mark.parametrize("name, expected", [
    ("missing image folder", "no-such-folder"),
    ("empty image folder", "empty"),
    ("different crops", "settings differ from the swarm"),
    ("different model", "settings differ from the swarm"),
])
def test_bad_input_is_a_one_line_error(swarm_run, name, expected):
    assert_one_line_error(swarm_run["bad"][name], expected)
