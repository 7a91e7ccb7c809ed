#!/usr/bin/env python3
"""One process of benchmarks/averaging.py: averages a vector with the other workers, round after round, and
writes the start and end time and the error of every round to --output (JSON).

--backend hivemind: a hivemind DHT on 127.0.0.1 plus one hivemind.averaging.DecentralizedAverager per
compression (butterfly all-reduce over libp2p). --backend gloo: torch.distributed all_reduce on the gloo backend.
Every worker starts each round from its own fixed vector (seeded by its rank), so every round has the same exact
answer, the mean of all workers' vectors, which each worker computes locally to check the result.

Started by benchmarks/averaging.py; not meant to be run by hand.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    FileBarrier,
    form_group,
    setup_worker_logging,
    shutdown_averager,
    wait_for_path,
    write_atomically,
)
from collab.arguments import parse_arguments
from collab.cli import run_main

logger = logging.getLogger(__name__)

INITIAL_PEERS_FILE = "initial_peers.txt"


@dataclass
class WorkerArguments:
    rank: int = field(metadata=dict(help="This worker's index, 0 .. world_size-1 (rank 0 starts the DHT)."))
    world_size: int = field(metadata=dict(help="Number of workers averaging together."))
    backend: str = field(metadata=dict(help="hivemind or gloo.", choices=["hivemind", "gloo"]))
    rendezvous_dir: str = field(metadata=dict(help="Folder shared by the workers (addresses, barriers)."))
    output: str = field(metadata=dict(help="Where this worker writes its timings and errors (JSON)."))
    vector_size: int = field(default=10_000, metadata=dict(help="Values in the averaged vector (float32)."))
    compressions: list[str] = field(
        default_factory=lambda: ["none"],
        metadata=dict(help="hivemind only: compressions to run one after the other (see collab/optimizer.py)."))
    rounds: int = field(default=3, metadata=dict(help="Timed rounds per compression."))
    warmup_rounds: int = field(default=1, metadata=dict(help="Untimed rounds first (connections, allocations)."))
    matchmaking_time: float = field(default=2.0, metadata=dict(help="hivemind: min_matchmaking_time (untimed)."))
    round_timeout: float = field(default=300.0, metadata=dict(help="Give up a round after this many seconds."))
    group_grace: float = field(default=5.0, metadata=dict(
        help="hivemind: a worker still looking for a group this many seconds after another worker's group formed "
             "was left out of it; matchmaking starts over (benchmarks/common.py, form_group)."))
    matchmaking_attempts: int = field(default=3, metadata=dict(help="hivemind: matchmaking attempts per round."))
    gloo_port: int = field(default=0, metadata=dict(help="gloo: TCP port of the rendezvous on 127.0.0.1."))
    seed: int = field(default=0, metadata=dict(help="Worker k's vector is drawn with seed 1000 * seed + k."))
    threads: int = field(default=1, metadata=dict(help="torch threads of this worker (workers share the cores)."))


def worker_vector(seed: int, rank: int, size: int) -> torch.Tensor:
    """The vector worker `rank` contributes: standard normal values, like a gradient after normalisation."""
    generator = torch.Generator().manual_seed(1000 * seed + rank)
    return torch.randn(size, generator=generator)


def exact_mean(seed: int, world_size: int, size: int) -> torch.Tensor:
    """The right answer of every round, summed in float64 so that it is exact to float32 precision."""
    total = torch.zeros(size, dtype=torch.float64)
    for rank in range(world_size):
        total += worker_vector(seed, rank, size)
    return (total / world_size).float()


def round_errors(result: torch.Tensor, expected: torch.Tensor) -> dict:
    difference = result - expected
    return dict(max_abs_error=difference.abs().max().item(), rms_error=difference.pow(2).mean().sqrt().item())


class RoundLog:
    """Timings and errors of every round, written by the worker and merged by the harness."""

    def __init__(self, args: WorkerArguments, original: torch.Tensor, expected: torch.Tensor):
        self.args = args
        self.rounds: list[dict] = []
        # How far a worker's own vector is from the mean: a "round" that averaged nothing has this error, so a
        # real round's error must be far below it (hivemind can report success without averaging, see the notes).
        self.unaveraged = round_errors(original, expected)
        self.value_scale = dict(max_abs=original.abs().max().item(), rms=original.pow(2).mean().sqrt().item())

    def add(self, method: str, index: int, start: float, end: float, errors: dict, peers: Optional[int],
            matchmaking_attempts: int = 1) -> None:
        self.rounds.append(dict(method=method, round=index, warmup=index < self.args.warmup_rounds, start=start,
                                end=end, peers=peers, matchmaking_attempts=matchmaking_attempts, **errors))

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(dict(rank=self.args.rank, world_size=self.args.world_size,
                                               backend=self.args.backend, unaveraged=self.unaveraged,
                                               value_scale=self.value_scale, rounds=self.rounds)))


def run_hivemind(args: WorkerArguments, original: torch.Tensor, expected: torch.Tensor, log: RoundLog,
                 barrier: FileBarrier) -> None:
    import hivemind
    from hivemind.averaging import DecentralizedAverager

    from collab.optimizer import make_compression

    rendezvous = Path(args.rendezvous_dir)
    initial_peers = []
    if args.rank > 0:
        wait_for_path(rendezvous / INITIAL_PEERS_FILE, timeout=300)
        initial_peers = (rendezvous / INITIAL_PEERS_FILE).read_text().split()
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial_peers)
    try:
        if args.rank == 0:
            write_atomically(rendezvous / INITIAL_PEERS_FILE, "\n".join(str(a) for a in dht.get_visible_maddrs()))
        barrier.wait("dht-ready")
        for compression in args.compressions:
            averager = DecentralizedAverager(
                [original.clone()], dht, start=True, prefix=f"averaging_benchmark_{compression}",
                target_group_size=args.world_size, min_group_size=args.world_size,
                min_matchmaking_time=args.matchmaking_time, request_timeout=min(1.0, args.matchmaking_time / 2),
                allreduce_timeout=args.round_timeout, compression=make_compression(compression),
                allow_state_sharing=False,  # nobody downloads it, and its periodic DHT records (shutdown_averager)
            )
            try:
                # every averager of this compression is up before anyone looks for a group, so that nobody's first
                # matchmaking runs against a peer that is not there yet. (The smoke test's one 300 s wait for a
                # group, once blamed on that, has the signature of hivemind leaving a worker out of the group it
                # completed, which this barrier cannot prevent: `form_group` detects it and matches again.)
                barrier.wait(f"{compression}-ready")
                for index in range(args.warmup_rounds + args.rounds):
                    run_hivemind_round(args, averager, original, expected, log, barrier, compression, index)
                barrier.wait(f"{compression}-done")  # a finished peer may still be sending others their results
            finally:
                shutdown_averager(averager, dht)
    finally:
        dht.shutdown()


def run_hivemind_round(args: WorkerArguments, averager, original: torch.Tensor, expected: torch.Tensor,
                       log: RoundLog, barrier: FileBarrier, compression: str, index: int) -> None:
    """Matchmaking first (untimed: it waits min_matchmaking_time by design) until every worker is in the group
    (`form_group` redoes it when hivemind left a worker out), then a barrier so that every peer starts the
    all-reduce within a few milliseconds of the others, then the timed all-reduce itself."""
    with averager.get_tensors() as tensors:
        tensors[0].copy_(original)
    control, attempts = form_group(
        lambda: averager.step(wait=False, require_trigger=True, allow_retries=False,
                              timeout=args.matchmaking_time + args.round_timeout),
        barrier, tag=f"{compression}-{index}", grace=args.group_grace, max_attempts=args.matchmaking_attempts)
    if control is None:
        raise RuntimeError(f"{compression} round {index}: no group of all {args.world_size} workers in "
                           f"{len(attempts)} matchmaking attempts: {[attempt['statuses'] for attempt in attempts]}")
    barrier.wait(f"{compression}-{index}")
    start = time.time()
    control.allow_allreduce()
    gathered = control.result(timeout=args.round_timeout)
    end = time.time()
    with averager.get_tensors() as tensors:
        errors = round_errors(tensors[0], expected)
    log.add(f"hivemind-{compression}", index, start, end, errors, peers=len(gathered),
            matchmaking_attempts=len(attempts))


def run_gloo(args: WorkerArguments, original: torch.Tensor, expected: torch.Tensor, log: RoundLog) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.gloo_port}", rank=args.rank,
                            world_size=args.world_size, timeout=timedelta(seconds=args.round_timeout))
    try:
        tensor = torch.empty_like(original)
        for index in range(args.warmup_rounds + args.rounds):
            tensor.copy_(original)
            dist.barrier()
            start = time.time()
            dist.all_reduce(tensor)  # a sum; dividing makes it the same mean that hivemind computes
            tensor.div_(args.world_size)
            end = time.time()
            log.add("gloo", index, start, end, round_errors(tensor, expected), peers=args.world_size)
    finally:
        dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> None:
    setup_worker_logging()
    (args,) = parse_arguments((WorkerArguments,), argv, description=__doc__)
    torch.set_num_threads(args.threads)
    original = worker_vector(args.seed, args.rank, args.vector_size)
    expected = exact_mean(args.seed, args.world_size, args.vector_size)
    log = RoundLog(args, original, expected)
    # longer than one matchmaking attempt (form_group waits in the barrier for every worker's outcome)
    barrier = FileBarrier(Path(args.rendezvous_dir) / "barriers", args.rank, args.world_size,
                          timeout=args.matchmaking_time + args.round_timeout + 60)
    runners: dict[str, Callable[[], None]] = dict(
        hivemind=lambda: run_hivemind(args, original, expected, log, barrier),
        gloo=lambda: run_gloo(args, original, expected, log),
    )
    try:
        runners[args.backend]()
    finally:
        log.save(Path(args.output))  # partial results help to see which round failed


if __name__ == "__main__":
    run_main(main)
