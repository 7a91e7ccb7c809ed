"""A real ALBERT swarm on loopback: coordinator, auxiliary peer and three trainers, each its own process.

One trainer uses the paper-era flag names and client mode. While the swarm trains, peers with bad input are
started next to it; each must fail with a one-line error, and the swarm must finish as if nothing happened.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AlbertForPreTraining

from albert.data import load_pretraining_dataset, make_collator
from collab.journal import JOURNAL_FILE, read_journal
from collab.lab.swarm import REPO_ROOT, LocalSwarm, assert_one_line_error
from collab.store import read_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_STEPS = 8
NUM_TRAINERS = 3
TARGET_BATCH = "1024"
CONFIG = str(REPO_ROOT / "albert/configs/demo.json")
PRESET = json.loads(Path(CONFIG).read_text())


def swarm_flags(dataset: Path) -> list[str]:
    # A global step of several seconds: peers that start late (imports on 2 busy cores) can still catch up.
    return ["--config", CONFIG, "--dataset_path", str(dataset), "--run_id", "swarm_test",
            "--target_batch_size", TARGET_BATCH, "--matchmaking_time", "4", "--max_steps", str(MAX_STEPS)]


def run_bad_peer(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "albert/run_trainer.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def swarm_run(tmp_path_factory, albert_dataset):
    root = tmp_path_factory.mktemp("swarm")
    common = swarm_flags(albert_dataset)
    bad_results = {}
    with LocalSwarm(root / "logs") as swarm:
        coordinator = swarm.start("coordinator", "albert/run_first_peer.py", common + [
            "--monitor_output_dir", str(root / "coordinator"), "--identity_path", str(root / "coordinator.id"),
            "--refresh_period", "0.5", "--save_checkpoint_step_interval", "3", "--wandb_mode", "offline"])
        initial_peers = swarm.wait_for_file(root / "coordinator/initial_peers.txt", 120, watch=[coordinator]).split()
        swarm.start("aux", "albert/run_aux.py", common + initial_peers)
        trainers = [swarm.start(f"trainer-{i}", "albert/run_trainer.py",
                                common + initial_peers + ["--output_dir", str(root / f"trainer-{i}")])
                    for i in (1, 2)]
        paper_era = ["--config", CONFIG, "--dataset_path", str(albert_dataset), "--experiment_prefix", "swarm_test",
                     *initial_peers, "--client_mode", "--target_batch_size", TARGET_BATCH, "--batch_size_lead", "0",
                     "--bandwidth", "50", "--averaging_timeout", "30", "--matchmaking_time", "4",
                     "--per_device_train_batch_size", "4", "--gradient_accumulation_steps",
                     "2", "--learning_rate", str(PRESET["learning_rate"]), "--warmup_steps",
                     str(PRESET["warmup_steps"]), "--seed", "42", "--logging_steps", "10",
                     "--max_steps", str(MAX_STEPS), "--output_dir", str(root / "trainer-3")]
        trainers.append(swarm.start("trainer-3", "albert/run_trainer.py", paper_era))

        store = root / "coordinator/metrics.sqlite"
        swarm.wait_until(lambda: store.exists() and len(read_store(store)["global_steps"]) >= 1, 300,
                         "the first global step", watch=[coordinator, *trainers])
        good_peer = initial_peers[1]
        bad_inputs = {
            "no initial peers": common,
            "malformed initial peers": common + ["--initial_peers", "127.0.0.1:31337"],
            "unreachable initial peers": common + ["--initial_peers", good_peer.rsplit("/tcp/", 1)[0] + "/tcp/9/p2p/"
                                                   + good_peer.rsplit("/p2p/", 1)[1]],
            "missing dataset": common + initial_peers + ["--dataset_path", str(root / "no-such-dataset")],
            "different model shape": common + initial_peers + ["--model_preset", "albert-large",
                                                               "--output_dir", str(root / "bad")],
        }
        for name, args in bad_inputs.items():
            bad_results[name] = run_bad_peer(args)
        swarm.wait_until(lambda: not any(t.alive for t in trainers), 400, "trainers to finish",
                         watch=[coordinator])
        swarm.stop(coordinator)
    return dict(root=root, trainers=trainers, bad=bad_results, store=read_store(store))


def test_trainers_finish_cleanly(swarm_run):
    for trainer in swarm_run["trainers"]:
        assert trainer.popen.returncode == 0, trainer.log_tail()
        assert "Traceback" not in trainer.log_text(), trainer.name


def test_all_trainers_end_with_identical_parameters(swarm_run):
    weights = []
    for i in range(1, NUM_TRAINERS + 1):
        final = swarm_run["root"] / f"trainer-{i}/checkpoints/step-{MAX_STEPS}/model.safetensors"
        assert final.exists(), f"trainer-{i} saved no checkpoint at step {MAX_STEPS}"
        weights.append(load_file(str(final)))
    for other in weights[1:]:
        for name, value in weights[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-5, atol=1e-6, msg=name)


def published(root: Path) -> dict[int, dict[str, dict]]:
    """What each trainer says it published, by step and trainer."""
    records: dict[int, dict[str, dict]] = {}
    for i in range(1, NUM_TRAINERS + 1):
        for event in read_journal(root / f"trainer-{i}" / JOURNAL_FILE):
            if event["event"] == "step":
                records.setdefault(event["step"], {})[f"trainer-{i}"] = event
    return records


def test_rounds_were_averaged_with_several_peers(swarm_run):
    records = published(swarm_run["root"])
    shared = [step for step, peers in records.items()
              if any(r["outcome"] == "averaged" and r["trainers_averaged"] >= 2 for r in peers.values())]
    assert len(shared) >= MAX_STEPS // 2, f"only steps {shared} were averaged with other peers"
    contributors = [len(peers) for peers in records.values()]
    assert max(contributors) == NUM_TRAINERS  # the client-mode trainer contributed too


def test_monitor_aggregates_equal_what_peers_published(swarm_run):
    records, store = published(swarm_run["root"]), swarm_run["store"]
    assert len(store["global_steps"]) >= MAX_STEPS - 2
    complete = 0
    for row in store["global_steps"]:
        peer_rows = [r for r in store["peer_metrics"] if r["step"] == row["step"]]
        sent = records[row["step"]]
        # every per-peer row the monitor stored is one that a trainer published for that step
        sent_values = sorted((r["loss_sum"], r["mini_steps"], r["samples_accumulated"]) for r in sent.values())
        stored_values = sorted((r["loss_sum"], r["mini_steps"], r["samples"]) for r in peer_rows)
        assert set(stored_values) <= set(sent_values)
        # and the aggregate is the sum of losses over the sum of mini-steps of those rows
        assert row["loss"] == pytest.approx(sum(r["loss_sum"] for r in peer_rows) / sum(r["mini_steps"] for r in peer_rows))
        assert row["samples"] == sum(r["samples"] for r in peer_rows)
        assert row["alive_peers"] == len(peer_rows)
        complete += stored_values == sent_values
    assert complete >= len(store["global_steps"]) // 2, "the monitor missed most peers' records"


def test_coordinator_checkpoint_loads_into_a_fresh_model(swarm_run, albert_dataset):
    checkpoints = swarm_run["store"]["checkpoints"]
    assert checkpoints, "the coordinator saved no checkpoint"
    model = AlbertForPreTraining.from_pretrained(checkpoints[-1]["path"])
    dataset, tokenizer = load_pretraining_dataset(albert_dataset)
    batch = make_collator(tokenizer)([dataset[i] for i in range(4)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
    state = torch.load(Path(checkpoints[-1]["path"]) / "optimizer.pt", weights_only=False)
    assert state["state"]["local_epoch"] == checkpoints[-1]["step"]


@pytest.mark.parametrize("name, expected", [
    ("no initial peers", "needs --initial_peers"),
    ("malformed initial peers", "is not a multiaddr"),
    ("unreachable initial peers", "could not reach any of --initial_peers"),
    ("missing dataset", "tokenize_wikitext103.py"),
    ("different model shape", "settings differ from the swarm"),
])
def test_bad_input_is_a_one_line_error(swarm_run, name, expected):
    assert_one_line_error(swarm_run["bad"][name], expected)
