"""The offline demo of any track: a whole collaboration on this machine, on CPU, in a few minutes.

A track's run_demo.py prepares its data, describes its demo with a `TrackDemo` (its scripts, its config file, the
extra flags its peers need) and calls `run_demo`. This starts a coordinator, an optional auxiliary peer and
trainers as separate processes through `LocalSwarm` (the same scripts you would run on real machines), prints
each global step as the coordinator records it in its metrics store, and ends with a summary. Ctrl-C stops
every process.
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from collab.checkpoints import latest_valid_checkpoint
from collab.errors import UserError
from collab.lab.swarm import REPO_ROOT, LocalSwarm, PeerProcess
from collab.store import read_store


@dataclass
class DemoArguments:
    """The flags every track's demo has; a track subclasses it to set its own --output_dir or add flags."""

    output_dir: str = field(default="outputs/demo", metadata=dict(help="Where data, logs and checkpoints go."))
    num_trainers: int = field(default=2, metadata=dict(help="Trainer processes to start."))
    max_steps: int = field(default=20, metadata=dict(help="Global steps to train before the demo ends."))
    aux: bool = field(default=True, metadata=dict(help="Also start an auxiliary (averaging-only) peer."))
    timeout: float = field(default=600.0, metadata=dict(help="Give up if the swarm has not finished by then (s)."))


@dataclass(frozen=True)
class DemoResult:
    """What a finished demo leaves behind, for a track's own closing lines."""

    output_dir: Path
    store_path: Path
    coordinator_checkpoint: Optional[str]  # the coordinator's newest checkpoint folder, if it saved one


@dataclass(frozen=True)
class TrackDemo:
    """One track's demo: its scripts (relative to the repository root), its config file, and extra flags."""

    first_peer_script: str  # e.g. albert/run_first_peer.py
    trainer_script: str
    aux_script: str
    config: str  # e.g. albert/configs/demo.json
    peer_args: Sequence[str] = ()  # flags for every peer (e.g. --dataset_path when all scripts read it)
    trainer_args: Sequence[str] = ()  # flags for trainers only
    # lines printed after the summary (e.g. how to evaluate the coordinator's checkpoint)
    epilogue: Optional[Callable[[DemoResult], Sequence[str]]] = None


def start_swarm(swarm: LocalSwarm, track: TrackDemo, args: DemoArguments, output_dir: Path) -> list[PeerProcess]:
    """Start the coordinator, then (once it printed its address) the aux peer and the trainers."""
    common = ["--config", str(REPO_ROOT / track.config), *track.peer_args, "--max_steps", str(args.max_steps)]
    coordinator_dir = output_dir / "coordinator"
    coordinator = swarm.start("coordinator", track.first_peer_script, common + [
        "--monitor_output_dir", str(coordinator_dir), "--identity_path", str(output_dir / "coordinator.id"),
        "--wandb_mode", "offline", "--refresh_period", "1", "--save_checkpoint_step_interval", "5"])
    initial_peers = swarm.wait_for_file(coordinator_dir / "initial_peers.txt", 120, watch=[coordinator]).split()
    join = common + initial_peers
    if args.aux:
        swarm.start("aux", track.aux_script, join)
    trainers = [swarm.start(f"trainer-{i}", track.trainer_script,
                            join + [*track.trainer_args, "--output_dir", str(output_dir / f"trainer-{i}"),
                                    "--seed", "42"])
                for i in range(1, args.num_trainers + 1)]
    return [coordinator, *trainers]


def follow_progress(swarm: LocalSwarm, store_path: Path, trainers: list[PeerProcess], args: DemoArguments) -> None:
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
    shared_rounds = len({row["step"] for row in peers
                         if row["outcome"] == "averaged" and row["trainers_averaged"] >= 2})
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


def run_demo(track: TrackDemo, args: DemoArguments) -> DemoResult:
    """Run the track's swarm until its trainers exit at --max_steps, then print the summary.

    The run's folders under --output_dir (coordinator, logs, trainer-*) are removed first: a demo always starts
    from scratch. Anything else there (e.g. the data a track's run_demo.py prepared) is kept.
    """
    output_dir = Path(args.output_dir).resolve()
    for stale in ("coordinator", "logs", *(p.name for p in output_dir.glob("trainer-*"))):
        shutil.rmtree(output_dir / stale, ignore_errors=True)
    store_path = output_dir / "coordinator/metrics.sqlite"
    started = time.monotonic()
    with LocalSwarm(output_dir / "logs") as swarm:
        coordinator, *trainers = start_swarm(swarm, track, args, output_dir)
        print(f"Swarm running: coordinator, {'1 aux peer, ' if args.aux else ''}{len(trainers)} trainers "
              f"(logs in {swarm.log_dir})", flush=True)
        follow_progress(swarm, store_path, trainers, args)
        swarm.stop(coordinator)  # flushes its last steps to the store
    print(summarize(store_path, output_dir, args.num_trainers))
    print(f"  wall time             : {time.monotonic() - started:.0f}s")
    checkpoints = read_store(store_path)["checkpoints"]
    result = DemoResult(output_dir, store_path, checkpoints[-1]["path"] if checkpoints else None)
    if track.epilogue is not None:
        for line in track.epilogue(result):
            print(line)
    return result
