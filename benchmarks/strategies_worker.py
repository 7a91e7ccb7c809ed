#!/usr/bin/env python3
"""One peer of benchmarks/strategies.py: averages a vector with the other peers of a network lab, round after round,
and writes the start and end time, the bytes its link moved and the check of every round to --output (JSON).

The peer runs a hivemind DHT and one DecentralizedAverager in one of three modes: `node` (sends its vector and
reduces a share of everyone's, the share set by hivemind's load balancing from the peers' `bandwidth` hints),
`client` (client mode on the DHT and on the averager: sends its vector, reduces nothing, accepts no connections)
or `aux` (an auxiliary peer: reduces, contributes no vector). A sender holds the constant --value, so the exact
result of every round is the mean of the senders' values, which the harness passes as --expected: a round is exact
when every value the peer holds afterwards equals it (a span a failed reducer left at local values does not).

Started by benchmarks/strategies.py inside a host of the network lab; not meant to be run by hand.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

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
MODES = ("node", "client", "aux")
# The link counters of the lab host this peer runs in (`ip netns exec` mounts the namespace's own sysfs).
LINK_STATISTICS = Path("/sys/class/net/eth0/statistics")


@dataclass
class StrategyWorkerArguments:
    name: str = field(metadata=dict(help="This peer's name (the lab host it runs in)."))
    index: int = field(metadata=dict(help="This peer's index among the --group_size peers of the run (barriers)."))
    group_size: int = field(metadata=dict(help="Peers in the averaging group, auxiliary peer included."))
    mode: str = field(metadata=dict(help="node, client or aux.", choices=list(MODES)))
    rendezvous_dir: str = field(metadata=dict(help="Folder shared by the peers (bootstrap address, barriers)."))
    output: str = field(metadata=dict(help="Where this peer writes its rounds (JSON)."))
    value: float = field(default=0.0, metadata=dict(help="The constant this peer's vector holds (senders)."))
    expected: float = field(default=0.0, metadata=dict(help="The exact mean of all senders' values."))
    bandwidth: Optional[float] = field(
        default=None, metadata=dict(help="hivemind's bandwidth hint for load balancing (none: no hint)."))
    bootstrap: bool = field(default=False, metadata=dict(help="This peer starts the DHT; the others join it."))
    address: Optional[str] = field(
        default=None, metadata=dict(help="This host's lab address: a public peer listens on --port and announces it."))
    port: int = field(default=0, metadata=dict(help="TCP port of a public peer."))
    prefix: str = field(default="strategies", metadata=dict(help="The averager's DHT prefix."))
    vector_size: int = field(default=10_000, metadata=dict(help="float32 values averaged per round."))
    rounds: int = field(default=3, metadata=dict(help="Timed rounds."))
    warmup_rounds: int = field(default=1, metadata=dict(help="Untimed rounds first (connections, allocations)."))
    matchmaking_time: float = field(default=3.0, metadata=dict(help="min_matchmaking_time (not timed)."))
    round_timeout: float = field(default=120.0, metadata=dict(help="Give up a round after this many seconds."))
    group_grace: float = field(default=5.0, metadata=dict(
        help="A peer still looking for a group this many seconds after another peer's group formed was left out of "
             "it by hivemind: matchmaking starts over (see benchmarks/common.py's form_group)."))
    matchmaking_attempts: int = field(default=3, metadata=dict(help="Matchmaking attempts per round at most."))
    threads: int = field(default=1, metadata=dict(help="torch threads of this peer (peers share the cores)."))
    overlap_results: bool = field(default=False, metadata=dict(
        help="What-if, not hivemind's behaviour: stream the averages back to peers that reduce nothing while they "
             "are still sending (see benchmarks/strategies.py)."))


def link_bytes() -> Optional[dict]:
    """Bytes sent and received so far by this host's link (None outside a lab host)."""
    try:
        return {key: int((LINK_STATISTICS / f"{key}_bytes").read_text()) for key in ("tx", "rx")}
    except OSError:
        return None


def start_dht(args: StrategyWorkerArguments):
    import hivemind

    rendezvous = Path(args.rendezvous_dir)
    initial_peers = []
    if not args.bootstrap:
        wait_for_path(rendezvous / INITIAL_PEERS_FILE, timeout=300)
        initial_peers = (rendezvous / INITIAL_PEERS_FILE).read_text().split()
    public = args.address is not None and args.mode != "client"
    dht = hivemind.DHT(start=True, initial_peers=initial_peers, client_mode=args.mode == "client",
                       host_maddrs=[f"/ip4/0.0.0.0/tcp/{args.port if public else 0}"],
                       announce_maddrs=[f"/ip4/{args.address}/tcp/{args.port}"] if public else None,
                       startup_timeout=60)
    if args.bootstrap:
        maddrs = [f"/ip4/{args.address}/tcp/{args.port}/p2p/{dht.peer_id}"] if public else \
            [str(maddr) for maddr in dht.get_visible_maddrs()]
        write_atomically(rendezvous / INITIAL_PEERS_FILE, "\n".join(maddrs))
    return dht


def run_round(args: StrategyWorkerArguments, averager, barrier: FileBarrier, index: int) -> dict:
    """Matchmaking first (untimed: it waits min_matchmaking_time by design) until every peer is in the group
    (`form_group` redoes it when hivemind left a peer out), then the link counters, then a barrier so that every peer
    starts the all-reduce within a few milliseconds of the others, then the timed all-reduce, then a second barrier
    after which the link counters hold the whole round's traffic (a reducer may still be sending when it is done).
    The first counters are read before the start barrier: once a peer passes it, it sends at once, and the bytes
    may reach a reducer that has not been scheduled since it passed the barrier itself."""
    if args.mode != "aux":
        with averager.get_tensors() as tensors:
            tensors[0].fill_(args.value)
    entry = dict(round=index, warmup=index < args.warmup_rounds, error=None, peers=None, group=None)
    # gathering the names tells the harness the group's order, which decides who reduces which parts
    control, attempts = form_group(
        lambda: averager.step(gather=args.name, wait=False, require_trigger=True, allow_retries=False,
                              timeout=args.matchmaking_time + args.round_timeout),
        barrier, tag=str(index), grace=args.group_grace, max_attempts=args.matchmaking_attempts)
    entry["matchmaking"] = attempts  # the same list in every peer's report
    before = link_bytes()
    barrier.wait(f"start-{index}")
    entry["start"] = time.time()
    try:
        if control is None:  # every peer knows it from the same statuses: none starts an all-reduce
            raise RuntimeError(f"no group of all {args.group_size} peers in {len(attempts)} matchmaking attempts: "
                               f"{[attempt['statuses'] for attempt in attempts]}")
        control.allow_allreduce()
        gathered = control.result(timeout=args.round_timeout)
        if gathered is not None:
            entry.update(peers=len(gathered), group=list(gathered.values()))  # in the group's order
    except Exception as e:  # counted as a failed round by the harness; the other peers go on
        entry["error"] = f"{type(e).__name__}: {e}"
        logger.warning(f"Round {index} failed: {entry['error']}")
    entry["end"] = time.time()
    if args.mode != "aux":
        with averager.get_tensors() as tensors:
            result = tensors[0]
            entry.update(share_exact=(result == args.expected).double().mean().item(), min=result.min().item(),
                         max=result.max().item())
    barrier.wait(f"end-{index}")
    after = link_bytes()
    if before is not None and after is not None:
        entry.update(tx_bytes=after["tx"] - before["tx"], rx_bytes=after["rx"] - before["rx"])
    return entry


def run(args: StrategyWorkerArguments, barrier: FileBarrier, rounds: list[dict]) -> None:
    from hivemind.averaging import DecentralizedAverager

    if args.overlap_results:
        from hivemind.averaging.allreduce import AllReduceRunner

        # hivemind returns a zero-share peer's averages only after that peer sent all its parts to the reducer
        # (should_delay_results); the averager's process is forked from this one, so the patch reaches it
        AllReduceRunner.should_delay_results = lambda self, peer_id: False
    dht = start_dht(args)
    try:
        barrier.wait("dht-ready")
        # client mode is passed to the averager explicitly, the same as the DHT's (HIVEMIND-NOTES.md)
        averager = DecentralizedAverager(
            [torch.zeros(args.vector_size)], dht, start=True, prefix=args.prefix,
            target_group_size=args.group_size, min_group_size=args.group_size,
            min_matchmaking_time=args.matchmaking_time, request_timeout=min(1.0, args.matchmaking_time / 2),
            allreduce_timeout=args.round_timeout, bandwidth=args.bandwidth, client_mode=args.mode == "client",
            auxiliary=args.mode == "aux",
            allow_state_sharing=False,  # nobody downloads it, and its periodic DHT records (shutdown_averager)
        )
        try:
            barrier.wait("averager-ready")
            for index in range(args.warmup_rounds + args.rounds):
                rounds.append(run_round(args, averager, barrier, index))
            barrier.wait("done")  # nobody leaves while another peer may still need its parts
        finally:
            shutdown_averager(averager, dht)
    finally:
        dht.shutdown()


def main(argv: Optional[list[str]] = None) -> None:
    setup_worker_logging()
    (args,) = parse_arguments((StrategyWorkerArguments,), argv, description=__doc__)
    torch.set_num_threads(args.threads)
    barrier = FileBarrier(Path(args.rendezvous_dir) / "barriers", args.index, args.group_size,
                          timeout=args.matchmaking_time + 2 * args.round_timeout + 120)
    rounds: list[dict] = []
    try:
        run(args, barrier, rounds)
    finally:  # partial results help to see which round failed
        write_atomically(Path(args.output), json.dumps(dict(
            name=args.name, index=args.index, mode=args.mode, bandwidth=args.bandwidth, value=args.value,
            expected=args.expected, link_counters=link_bytes() is not None, rounds=rounds)))


if __name__ == "__main__":
    run_main(main)
