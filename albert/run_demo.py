#!/usr/bin/env python3
"""Demo: a whole ALBERT collaboration on this machine, on CPU, offline, in a few minutes.

Builds a small pretraining set from the built-in corpus, then starts a coordinator, an auxiliary peer and
trainers as separate processes (the same scripts you would run on real machines, with albert/configs/demo.json),
shows the swarm's progress, and ends with a summary. Ctrl-C stops every process.
"""
from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.checkpoints import latest_valid_checkpoint
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.swarm import REPO_ROOT, LocalSwarm
from collab.store import read_store

logger = logging.getLogger(__name__)

DEMO_CONFIG = "albert/configs/demo.json"


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata=dict(help="Where data, logs and checkpoints go."))
    num_trainers: int = field(default=2, metadata=dict(help="Trainer processes to start."))
    max_steps: int = field(default=20, metadata=dict(help="Global steps to train before the demo ends."))
    aux: bool = field(default=True, metadata=dict(help="Also start an auxiliary (averaging-only) peer."))
    timeout: float = field(default=600.0, metadata=dict(help="Give up if the swarm has not finished by then (s)."))


def prepare_data(data_dir: Path) -> None:
    if (data_dir / "tokenizer").is_dir():
        logger.info(f"Using the demo dataset in {data_dir}")
        return
    logger.info("Building the demo dataset from the built-in corpus (tokenizer training + SOP instances)")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "albert/tokenize_wikitext103.py"), "--builtin_corpus",
         "--tokenizer_name", "none", "--vocab_size", "4000", "--max_seq_length", "128",
         "--output_path", str(data_dir), "--overwrite_output_dir"],
        check=True,
    )


def start_swarm(swarm: LocalSwarm, args: DemoArguments, output_dir: Path, data_dir: Path) -> list:
    common = ["--config", str(REPO_ROOT / DEMO_CONFIG), "--dataset_path", str(data_dir),
              "--max_steps", str(args.max_steps)]
    coordinator_dir = output_dir / "coordinator"
    coordinator = swarm.start("coordinator", "albert/run_first_peer.py", common + [
        "--monitor_output_dir", str(coordinator_dir), "--identity_path", str(output_dir / "coordinator.id"),
        "--wandb_mode", "offline", "--refresh_period", "1", "--save_checkpoint_step_interval", "5"])
    initial_peers = swarm.wait_for_file(coordinator_dir / "initial_peers.txt", 120, watch=[coordinator]).split()
    join = common + initial_peers
    if args.aux:
        swarm.start("aux", "albert/run_aux.py", join)
    trainers = [swarm.start(f"trainer-{i}", "albert/run_trainer.py",
                            join + ["--output_dir", str(output_dir / f"trainer-{i}"), "--seed", "42"])
                for i in range(1, args.num_trainers + 1)]
    return [coordinator, *trainers]


def follow_progress(swarm: LocalSwarm, store_path: Path, trainers: list, args: DemoArguments) -> None:
    """Print each global step as the coordinator records it, until every trainer has exited."""
    shown, deadline = 0, time.monotonic() + args.timeout
    while any(trainer.alive for trainer in trainers):
        if time.monotonic() > deadline:
            raise UserError(f"the demo did not finish within {args.timeout:.0f}s; logs are in {swarm.log_dir}")
        if store_path.exists():
            for row in read_store(store_path)["global_steps"]:
                if row["step"] > shown:
                    shown = row["step"]
                    print(f"  step {row['step']:>3}/{args.max_steps}  loss {row['loss']:.3f}  "
                          f"peers {row['alive_peers']}  {row['samples_per_second']:.0f} samples/s", flush=True)
        time.sleep(1.0)
    failed = [trainer for trainer in trainers if trainer.popen.returncode != 0]
    if failed:
        raise UserError(f"{failed[0].name} failed (exit {failed[0].popen.returncode}); last lines of "
                        f"{failed[0].log_path}:\n{failed[0].log_tail()}")


def summarize(store_path: Path, output_dir: Path, num_trainers: int) -> str:
    data = read_store(store_path)
    steps, peers = data["global_steps"], data["peer_metrics"]
    if not steps:
        raise UserError(f"the coordinator recorded no global step; see the logs in {output_dir / 'logs'}")
    per_peer: dict[str, list[float]] = {}
    for row in peers:
        per_peer.setdefault(row["peer"], []).append(row["samples_per_second"])
    shared_rounds = len({row["step"] for row in peers if row["outcome"] == "averaged" and row["trainers_averaged"] >= 2})
    trainer_checkpoints = [str(folder) for trainer in sorted(output_dir.glob("trainer-*"))
                           if (folder := latest_valid_checkpoint(trainer / "checkpoints")) is not None]
    coordinator_checkpoints = data["checkpoints"]
    lines = [
        "",
        "Demo summary",
        f"  global steps recorded : {steps[-1]['step']} (first recorded: {steps[0]['step']})",
        f"  loss                  : {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}",
        f"  trainers              : {len(per_peer)} reported metrics (started {num_trainers})",
        *(f"  samples/s of {peer}  : {statistics.mean(values):.1f}" for peer, values in sorted(per_peer.items())),
        f"  steps averaged by >= 2 trainers: {shared_rounds} of {len(steps)}",
        "  coordinator checkpoint: "
        + (f"{coordinator_checkpoints[-1]['path']} (step {coordinator_checkpoints[-1]['step']})"
           if coordinator_checkpoints else "none yet"),
        f"  trainer checkpoints   : {', '.join(trainer_checkpoints) or 'none'}",
        f"  metrics database      : {store_path}",
        f"  logs                  : {output_dir / 'logs'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    (args,) = parse_arguments((DemoArguments,), argv, description=__doc__)
    output_dir = Path(args.output_dir).resolve()
    data_dir = output_dir / "data"
    for stale in ("coordinator", "logs", *(p.name for p in output_dir.glob("trainer-*"))):
        shutil.rmtree(output_dir / stale, ignore_errors=True)  # a demo always starts from scratch
    prepare_data(data_dir)
    store_path = output_dir / "coordinator/metrics.sqlite"
    started = time.monotonic()
    with LocalSwarm(output_dir / "logs") as swarm:
        coordinator, *trainers = start_swarm(swarm, args, output_dir, data_dir)
        print(f"Swarm running: coordinator, {'1 aux peer, ' if args.aux else ''}{len(trainers)} trainers "
              f"(logs in {swarm.log_dir})", flush=True)
        follow_progress(swarm, store_path, trainers, args)
        swarm.stop(coordinator)  # flushes its last steps to the store
    print(summarize(store_path, output_dir, args.num_trainers))
    print(f"  wall time             : {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run_main(main)
