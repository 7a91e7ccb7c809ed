#!/usr/bin/env python3
"""Averaging strategies under constrained, heterogeneous bandwidth: the paper's comparison on the network lab.

Peers sit on hosts of the network lab (collab/lab/netlab.py) whose links are capped with tbf in both directions, in the
proportions of the paper's cloud setup (4 x 200, 8 x 100, 4 x 50 Mbit/s), scaled to what 2 cores can drive: by
default 6 public peers (2 x 40, 3 x 20, 1 x 10 Mbit/s) and 2 peers in client mode behind a NAT router (20 and
10 Mbit/s), so that all 8 are in the proportions 2:4:2. Each peer is its own OS process
(benchmarks/strategies_worker.py) with a hivemind DHT and a DecentralizedAverager. The same float32 vector
(no compression) is averaged with each strategy:

  equal             butterfly all-reduce, no bandwidth hints: hivemind splits the vector equally among the
                    peers that accept connections (clients reduce nothing)
  bandwidth-aware   the same peers, each passing `bandwidth=<its cap in Mbit/s>`: hivemind's load balancing
                    (hivemind/averaging/load_balancing.py, a linear program) sets the shares
  parameter-server  one extra, well-connected auxiliary peer (--aux_mbit) reduces everything; every other peer is
                    in client mode

and compared with the lower bound from the linear program: the time the best split of the vector needs if every
link ran at its cap in both directions at once (see `lp_bound`). Every round is checked (each sender holds a known
constant: afterwards every value must equal the exact mean); rounds that end with part of a peer's values
unaveraged are counted, not hidden. Writes benchmarks/results/strategies.json, .md and .png. Needs root.

    sudo .venv/bin/python benchmarks/strategies.py                      # the committed run (~8 min on 2 cores)
    sudo .venv/bin/python benchmarks/strategies.py --vector_size 200000 --rounds 2   # a quick look
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.averaging import wait_for_workers
from benchmarks.common import machine_info, markdown_table, pyplot, summarize, write_results
from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.swarm import LocalSwarm

logger = logging.getLogger(__name__)

WORKER_SCRIPT = "benchmarks/strategies_worker.py"
STRATEGIES = ("equal", "bandwidth-aware", "parameter-server")
BITS_PER_VALUE = 32  # float32, no compression
AUX_HOST, ROUTER = "ps", "home"
BASE_PORT = 32100  # every public peer listens on BASE_PORT + the strategy's number, in its own namespace
MB = 1e6


@dataclass
class StrategiesArguments:
    vector_size: int = field(
        default=2_359_296,
        metadata=dict(help="float32 values averaged per round: 9.4 MB, 18 of hivemind's 512 KB parts, so that an "
                           "equal split among 6 reducers is exact (hivemind splits by whole parts). At the default "
                           "caps the slowest link needs 7.5 s to send this vector once."))
    public_mbit: list[float] = field(
        default_factory=lambda: [40.0, 40.0, 20.0, 20.0, 20.0, 10.0],
        metadata=dict(help="Link caps (Mbit/s, each direction) of the peers on public hosts, one per peer."))
    client_mbit: list[float] = field(
        default_factory=lambda: [20.0, 10.0],
        metadata=dict(help="Link caps of the peers in client mode behind a NAT router, one per peer."))
    aux_mbit: float = field(
        default=100.0, metadata=dict(help="Link cap of the auxiliary peer that reduces everything in the "
                                          "parameter-server layout."))
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES),
                                  metadata=dict(help=f"Strategies to measure, any of {', '.join(STRATEGIES)}."))
    rounds: int = field(default=5, metadata=dict(help="Timed rounds per strategy."))
    warmup_rounds: int = field(default=1, metadata=dict(help="Untimed rounds before them (connections, buffers)."))
    matchmaking_time: float = field(
        default=3.0, metadata=dict(help="hivemind's min_matchmaking_time; matchmaking is not part of the timing."))
    round_timeout: float = field(default=180.0, metadata=dict(help="A round that takes longer fails."))
    group_grace: float = field(default=5.0, metadata=dict(
        help="Untimed: a peer still looking for a group this many seconds after another peer's group formed was "
             "left out of it by hivemind's matchmaking, and matchmaking starts over (benchmarks/common.py, "
             "form_group). The last peer of a complete group matched at most 2.0 s after the first in the runs "
                  "made while adding this, with processes frozen at random (benchmarks/README.md)."))
    matchmaking_attempts: int = field(default=3, metadata=dict(
        help="Matchmaking attempts per round at most; a round whose group never holds every peer fails."))
    worker_threads: int = field(default=1, metadata=dict(help="torch threads per peer (peers share the cores)."))
    overlap_results: bool = field(default=False, metadata=dict(
        help="A what-if, NOT hivemind's behaviour: hivemind sends the averages to a peer that reduces nothing (a "
             "client, or a peer whose share is 0) only after that peer has sent its whole input to the reducer "
             "(AllReduceRunner.should_delay_results); with this flag the peers patch that out, so such a peer "
             "receives while it sends, as reducers do. Use another --name for its results."))
    name: str = field(default="strategies", metadata=dict(help="Base name of the result files."))
    output_dir: str = field(default="outputs/strategies-benchmark",
                            metadata=dict(help="Peer logs and raw per-peer JSON (emptied at the start)."))
    results_dir: str = field(default="benchmarks/results",
                             metadata=dict(help="Where <name>.json, <name>.md and <name>.png are written."))

    def __post_init__(self) -> None:
        if self.vector_size < 1000:
            raise UserError("--vector_size must be at least 1000")
        if len(self.public_mbit) < 2:
            raise UserError("--public_mbit: give at least 2 public peers (the butterfly needs 2 reducers)")
        if not self.client_mbit:
            raise UserError("--client_mbit: give at least one peer in client mode")
        if min(self.public_mbit + self.client_mbit + [self.aux_mbit]) <= 0:
            raise UserError("link caps (--public_mbit, --client_mbit, --aux_mbit) must be positive")
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown or not self.strategies:
            raise UserError(f"--strategies: unknown {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
        if self.rounds < 1 or self.warmup_rounds < 0:
            raise UserError("--rounds must be at least 1 and --warmup_rounds at least 0")
        if len(self.public_mbit) + len(self.client_mbit) > 16:
            raise UserError("at most 16 peers besides the aux peer: their test values (S * 2^rank) must stay exact")
        if self.group_grace <= 0 or self.matchmaking_attempts < 1:
            raise UserError("--group_grace must be positive and --matchmaking_attempts at least 1")


# -- the model: what each peer's link carries, and the best split ----------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """One participant of a round: its link and its role in the butterfly all-reduce."""
    name: str  # also the lab host it runs in
    mbit: float
    sender: bool  # contributes a vector (every peer but the auxiliary one)
    reducer: bool  # averages a share of everyone's vector (not a client)
    bandwidth_hint: Optional[float] = None  # what it passes as DecentralizedAverager(bandwidth=...)

    @property
    def mode(self) -> str:
        return "aux" if not self.sender else "node" if self.reducer else "client"


def traffic(peer: Peer, share: float, senders: int) -> float:
    """Values this peer's link carries in each direction in one round, in units of the vector (per direction:
    what it uploads equals what it downloads). A sender ships the (1 - share) of its vector that others reduce and
    gets their averages back; a reducer receives its share from each of the other senders and returns the average
    to each of them. This is the cost model of hivemind's `optimize_parts_lp` (1 + (N - 2) * share for a peer that
    sends and reduces), extended to clients (share 0) and auxiliary peers (no vector of their own)."""
    if peer.sender and peer.reducer:
        return (1 - share) + (senders - 1) * share
    if peer.sender:
        assert share == 0, f"{peer.name} reduces nothing"
        return 1.0
    return senders * share


def split_seconds(vector_size: int, peers: Sequence[Peer], shares: Sequence[float]) -> float:
    """The time a split needs if every link runs at its cap in both directions at once: the busiest link's time."""
    senders = sum(peer.sender for peer in peers)
    return max(BITS_PER_VALUE * vector_size * traffic(peer, share, senders) / (peer.mbit * 1e6)
               for peer, share in zip(peers, shares))


def lp_bound(vector_size: int, peers: Sequence[Peer]) -> tuple[float, list[float]]:
    """The lower bound: min over splits (shares of the reducers, summing to 1) of `split_seconds`, as a linear
    program (minimise T subject to 32 V traffic_i(w) / b_i <= T for every peer, clients and the aux included).
    Returns the bound in seconds and one optimal split."""
    import numpy as np
    from scipy.optimize import linprog

    senders = sum(peer.sender for peer in peers)
    count = len(peers)
    c = np.zeros(count + 1)
    c[-1] = 1.0  # variables: shares w_1..w_n, then T
    a_ub, b_ub = [], []
    for i, peer in enumerate(peers):
        seconds_per_value = BITS_PER_VALUE * vector_size / (peer.mbit * 1e6)
        row = np.zeros(count + 1)
        row[-1] = -1.0
        constant = traffic(peer, 0.0, senders)  # traffic is affine in the share: constant + slope * share
        row[i] = (traffic(peer, 1.0, senders) - constant) * seconds_per_value if peer.reducer else 0.0
        a_ub.append(row)
        b_ub.append(-constant * seconds_per_value)
    a_eq = np.array([[1.0 if peer.reducer else 0.0 for peer in peers] + [0.0]])
    bounds = [(0.0, None if peer.reducer else 0.0) for peer in peers] + [(0.0, None)]
    solution = linprog(c, A_ub=np.array(a_ub), b_ub=np.array(b_ub), A_eq=a_eq, b_eq=[1.0], bounds=bounds,
                       method="highs")
    if not solution.success:
        raise RuntimeError(f"the load-balancing LP failed: {solution.message}")
    return float(solution.x[-1]), [float(x) for x in solution.x[:-1]]


def closed_form_bound(vector_size: int, peers: Sequence[Peer]) -> float:
    """The LP's optimum in closed form, when every reducer is also a sender (no auxiliary peer): with S senders and
    R reducers, T* = 32 V * max(1 / min over senders of b_i, (S - 2 + R) / sum over reducers of b_i). Every sender
    must ship at least its whole vector once; and once T is at least that, every reducer can take the share
    (T b_i / 32V - 1) / (S - 2), which must add up to 1."""
    assert all(peer.sender for peer in peers), "the closed form holds without auxiliary peers"
    senders = len(peers)
    reducers = [peer for peer in peers if peer.reducer]
    floor = 1 / min(peer.mbit for peer in peers)
    balance = (senders - 2 + len(reducers)) / sum(peer.mbit for peer in reducers)
    return BITS_PER_VALUE * vector_size * max(floor, balance) / 1e6


def hivemind_split(vector_size: int, peers: Sequence[Peer]) -> list[float]:
    """The shares hivemind's load balancing aims at: `load_balance_peers` on the gathered bandwidth hints, clients
    as 0 (what DecentralizedAverager._aggregate_with_group does)."""
    import warnings

    from hivemind.averaging.load_balancing import load_balance_peers

    hints = [peer.bandwidth_hint if peer.reducer else 0.0 for peer in peers]
    with warnings.catch_warnings():  # scipy deprecates the interior-point method hivemind asks for
        warnings.simplefilter("ignore")
        parts = load_balance_peers(vector_size, hints)
    return [part / vector_size for part in parts]


def hivemind_shares(vector_size: int, peers_in_group_order: Sequence[Peer]) -> list[float]:
    """The shares peers actually reduce: hivemind cuts the vector into parts of 512 KB (part_size_bytes) and gives
    each whole part to the peer whose target span covers most of it, walking the peers in the group's order
    (hivemind's own TensorPartContainer does it here). So the split is quantised, and which peer gets a part cut by a
    span border depends on the order that matchmaking produced."""
    import torch
    from hivemind.averaging.partition import TensorPartContainer

    container = TensorPartContainer([torch.empty(vector_size)], hivemind_split(vector_size, peers_in_group_order))
    return [sum(part.numel() for part in container.get_raw_input_parts(index)) / vector_size
            for index in range(len(peers_in_group_order))]


# -- the layout: lab hosts and who runs where ------------------------------------------------------------------------

def public_names(args: StrategiesArguments) -> list[str]:
    return [f"p{i + 1}" for i in range(len(args.public_mbit))]


def client_names(args: StrategiesArguments) -> list[str]:
    return [f"c{i + 1}" for i in range(len(args.client_mbit))]


def participants(args: StrategiesArguments, strategy: str) -> list[Peer]:
    """The peers of one strategy, the one that starts the DHT first (it must accept connections)."""
    public = list(zip(public_names(args), args.public_mbit))
    clients = list(zip(client_names(args), args.client_mbit))
    if strategy == "parameter-server":
        return [Peer(AUX_HOST, args.aux_mbit, sender=False, reducer=True)] + \
            [Peer(name, mbit, sender=True, reducer=False) for name, mbit in public + clients]
    hinted = strategy == "bandwidth-aware"
    return [Peer(name, mbit, sender=True, reducer=True, bandwidth_hint=mbit if hinted else None)
            for name, mbit in public] + \
        [Peer(name, mbit, sender=True, reducer=False, bandwidth_hint=mbit if hinted else None)
         for name, mbit in clients]


def build_lab(lab, args: StrategiesArguments) -> None:
    for name, mbit in zip(public_names(args), args.public_mbit):
        lab.add_public_host(name, bandwidth_mbit=mbit)
    lab.add_router(ROUTER)
    for name, mbit in zip(client_names(args), args.client_mbit):
        lab.add_private_host(name, ROUTER, bandwidth_mbit=mbit)
    if "parameter-server" in args.strategies:
        lab.add_public_host(AUX_HOST, bandwidth_mbit=args.aux_mbit)


# -- running one strategy --------------------------------------------------------------------------------------------

def sender_values(senders: int) -> list[float]:
    """The constant each sender's vector holds: S * 2^rank for S senders. The mean, 2^S - 1, is odd, so it equals no
    sender's own value (with 1, 2, 3 the middle sender would hold the mean before averaging, and a round that left
    its values alone would pass the check). Integers below 2^24, so float32 holds them, their sum and the mean
    exactly, and hivemind's average (sum of the parts, divided by the weight) is exact."""
    return [float(senders * 2 ** rank) for rank in range(senders)]


def run_strategy(args: StrategiesArguments, lab, strategy: str, run_dir: Path) -> list[dict]:
    """Start every peer of the strategy in its lab host, wait until all rounds are done, return their reports."""
    peers = participants(args, strategy)
    senders = [peer for peer in peers if peer.sender]
    values = sender_values(len(senders))
    values = {peer.name: value for peer, value in zip(senders, values)}
    expected = sum(values.values()) / len(values)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = BASE_PORT + STRATEGIES.index(strategy)
    common = ["--group_size", str(len(peers)), "--rendezvous_dir", str(run_dir), "--expected", str(expected),
              "--prefix", f"strategies_{strategy.replace('-', '_')}", "--vector_size", str(args.vector_size),
              "--rounds", str(args.rounds), "--warmup_rounds", str(args.warmup_rounds), "--matchmaking_time",
              str(args.matchmaking_time), "--round_timeout", str(args.round_timeout), "--threads",
              str(args.worker_threads), "--port", str(port), "--group_grace", str(args.group_grace),
              "--matchmaking_attempts", str(args.matchmaking_attempts)]
    if args.overlap_results:
        common.append("--overlap_results")
    budget = 300 + (args.warmup_rounds + args.rounds) * (
        args.matchmaking_attempts * (args.matchmaking_time + args.round_timeout) + args.round_timeout)
    with LocalSwarm(run_dir / "logs") as swarm:
        workers = []
        for index, peer in enumerate(peers):
            argv = ["--name", peer.name, "--index", str(index), "--mode", peer.mode, "--output",
                    str(run_dir / f"{peer.name}.json"), "--value", str(values.get(peer.name, 0.0)),
                    "--address", lab.address(peer.name), *common]
            if index == 0:
                argv.append("--bootstrap")
            if peer.bandwidth_hint is not None:
                argv += ["--bandwidth", str(peer.bandwidth_hint)]
            workers.append(swarm.start(peer.name, WORKER_SCRIPT, argv, wrap=partial(lab.command, peer.name)))
        wait_for_workers(workers, budget, f"{strategy} peers")
    return [json.loads((run_dir / f"{peer.name}.json").read_text()) for peer in peers]


def summarize_strategy(args: StrategiesArguments, strategy: str, reports: list[dict]) -> dict:
    """Timed rounds of one strategy across all its peers. A round lasts from the first peer's start to the last
    one's end; it is exact when no peer failed and every sender holds the exact mean in every position afterwards.

    The bytes each link moved, and what the model says it must carry (`traffic`, at the share this peer reduced in
    that round), come from the exact rounds only: in a round that failed or left values unaveraged, a peer may have
    sent nothing at all (a peer left out of the group keeps looking for one, alone), so its bytes say nothing about
    the strategy. Such rounds are counted and listed in `incomplete`; their times are in the round times."""
    peers = participants(args, strategy)
    by_round: dict[int, list[dict]] = {}
    for report in reports:
        for entry in report["rounds"]:
            if not entry["warmup"]:
                by_round.setdefault(entry["round"], []).append(dict(entry, name=report["name"], mode=report["mode"]))
    round_seconds, exact, incomplete, split_times, regrouped = [], 0, [], [], []
    per_peer = {peer.name: dict(tx=[], rx=[], model=[], finish=[], share=[]) for peer in peers}
    by_name = {peer.name: peer for peer in peers}
    senders = sum(peer.sender for peer in peers)
    for index, entries in sorted(by_round.items()):
        start = min(e["start"] for e in entries)
        round_seconds.append(max(e["end"] for e in entries) - start)
        attempts = max((e.get("matchmaking", []) for e in entries), key=len)
        if len(attempts) > 1:  # the group was formed again before the round started (untimed)
            regrouped.append(dict(round=index, statuses=[attempt["statuses"] for attempt in attempts[:-1]]))
        order = next((e["group"] for e in entries if e["group"]), None)
        shares_by_name = {}
        if order and sorted(order) == sorted(by_name):
            ordered = [by_name[name] for name in order]
            shares = hivemind_shares(args.vector_size, ordered)
            split_times.append(split_seconds(args.vector_size, ordered, shares))
            shares_by_name = dict(zip(order, shares))
            for name, share in shares_by_name.items():
                per_peer[name]["share"].append(share)
        problems = [dict(round=index, peer=e["name"], share_exact=e.get("share_exact"), error=e["error"],
                         peers=e["peers"])
                    for e in entries if e["error"] or e["peers"] != len(peers)
                    or (e["mode"] != "aux" and e["share_exact"] != 1.0)]
        is_exact = len(entries) == len(peers) and not problems and bool(shares_by_name)
        exact += is_exact
        incomplete += problems
        for e in entries:
            per_peer[e["name"]]["finish"].append(e["end"] - start)
            if is_exact and "tx_bytes" in e:
                measured = per_peer[e["name"]]
                measured["tx"].append(e["tx_bytes"])
                measured["rx"].append(e["rx_bytes"])
                measured["model"].append(BITS_PER_VALUE // 8 * args.vector_size *
                                         traffic(by_name[e["name"]], shares_by_name[e["name"]], senders))
    targets = hivemind_split(args.vector_size, peers)
    bound, _ = lp_bound(args.vector_size, peers)
    peer_rows = []
    for peer, target in zip(peers, targets):
        measured = per_peer[peer.name]
        tx = statistics.median(measured["tx"]) if measured["tx"] else None
        rx = statistics.median(measured["rx"]) if measured["rx"] else None
        share = statistics.median(measured["share"]) if measured["share"] else target
        peer_rows.append(dict(
            name=peer.name, mbit=peer.mbit, mode=peer.mode, bandwidth_hint=peer.bandwidth_hint,
            target_share=target, share=share, shares=measured["share"],
            # medians over the exact rounds, and each exact round's own numbers (same order)
            model_bytes_each_way=statistics.median(measured["model"]) if measured["model"] else None,
            tx_bytes=tx, rx_bytes=rx, model_bytes_per_round=measured["model"], tx_bytes_per_round=measured["tx"],
            rx_bytes_per_round=measured["rx"],
            # how long the bytes it actually moved take at its cap: its link's busy time, if it never idled
            link_seconds=None if tx is None else max(tx, rx) * 8 / (peer.mbit * 1e6),
            finish_seconds=summarize(measured["finish"])))
    seconds = summarize(round_seconds)
    links = [row["link_seconds"] for row in peer_rows if row["link_seconds"] is not None]
    return dict(
        strategy=strategy, peers=peer_rows, round_seconds=round_seconds, seconds=seconds, rounds=len(by_round),
        rounds_exact=exact, incomplete=incomplete, rounds_regrouped=regrouped, bound_seconds=bound,
        ratio_to_bound=seconds["median"] / bound,
        # the time its split (as cut into parts, median over the rounds) needs at the caps: the model's verdict
        split_seconds=statistics.median(split_times) if split_times else split_seconds(args.vector_size, peers,
                                                                                       targets),
        busiest_link_seconds=max(links) if links else None,
        wire_bytes_per_round=sum(row["tx_bytes"] for row in peer_rows) if links else None,
    )


# -- report ----------------------------------------------------------------------------------------------------------

def describe_shares(row: dict) -> str:
    """`p1, p2 36%; p3-p5 9%` style: the reducers and the share of the vector each averages."""
    groups: dict[str, list[str]] = {}
    for peer in row["peers"]:
        if max(peer["shares"] or [peer["share"]]) > 0:
            groups.setdefault(share_range(peer), []).append(peer["name"])
    return "; ".join(f"{', '.join(names)} {share}" for share, names in groups.items())


def share_range(peer: dict) -> str:
    """The share of the vector a peer reduced: one number, or the range over the rounds (it follows the group's
    order, see `hivemind_shares`)."""
    low, high = (min(peer["shares"]), max(peer["shares"])) if peer["shares"] else (peer["share"], peer["share"])
    return f"{100 * low:.0f}%" if round(100 * low) == round(100 * high) else f"{100 * low:.0f}-{100 * high:.0f}%"


def table(report: dict) -> str:
    header = ["strategy", "reducers: share of the vector", "s/round median (min-max)", "x LP bound",
              "its split at the caps (s)", "busiest link, measured bytes at cap (s)", "MB on the wire per round",
              "rounds averaged exactly"]
    rows = []
    for row in report["rows"]:
        seconds = row["seconds"]
        rows.append([row["strategy"], describe_shares(row),
                     f"{seconds['median']:.2f} ({seconds['min']:.2f}-{seconds['max']:.2f})",
                     f"{row['ratio_to_bound']:.2f}", f"{row['split_seconds']:.2f}",
                     _number(row["busiest_link_seconds"], "{:.2f}"),
                     _number(row["wire_bytes_per_round"] and row["wire_bytes_per_round"] / MB, "{:.0f}"),
                     _exactness(row)])
    for bound in report["bounds"]:
        rows.append([f"LP lower bound: {bound['layout']}", bound["shares"], f"{bound['seconds']:.2f}", "1.00",
                     "", "", f"{bound['payload_bytes'] / MB:.0f}", ""])
    return markdown_table(header, rows) + "\n\n" + peer_table(report)


def peer_table(report: dict) -> str:
    """Per peer and strategy: its share, the bytes its link moved per round (sent / received) and when it finished."""
    strategies = [row["strategy"] for row in report["rows"]]
    header = ["peer", "link (Mbit/s)"] + [f"{s}: share, MB sent / received, done after (s)" for s in strategies]
    names = list(dict.fromkeys(peer["name"] for row in report["rows"] for peer in row["peers"]))
    rows = []
    for name in names:
        cells, mbit = [], None
        for row in report["rows"]:
            peer = next((p for p in row["peers"] if p["name"] == name), None)
            if peer is None:
                cells.append("")
                continue
            mbit = peer["mbit"]
            role = {"client": "client, ", "aux": "aux, "}.get(peer["mode"], "")
            moved = "n/a" if peer["tx_bytes"] is None else \
                f"{peer['tx_bytes'] / MB:.1f} / {peer['rx_bytes'] / MB:.1f}"
            cells.append(f"{role}{share_range(peer)}, {moved}, {peer['finish_seconds']['median']:.2f}")
        rows.append([name, f"{mbit:g}", *cells])
    return markdown_table(header, rows)


def _number(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _exactness(row: dict) -> str:
    text = f"{row['rounds_exact']} of {row['rounds']}"
    if row["incomplete"]:
        worst = min((p["share_exact"] for p in row["incomplete"] if p["share_exact"] is not None), default=None)
        failed = sum(p["error"] is not None for p in row["incomplete"])
        text += f" (**{row['rounds'] - row['rounds_exact']} not**"
        text += f"; worst peer holds {100 * worst:.1f}% of the mean" if worst is not None else ""
        text += f"; {failed} peer-rounds raised" if failed else ""
        text += ")"
    if row.get("rounds_regrouped"):
        text += f"; matchmaking redone before {len(row['rounds_regrouped'])} (a peer was not in the group)"
    return text


def plot(report: dict, path: Path) -> None:
    """Left: seconds per round against the LP bound. Middle: what each peer's link carried. Right: when each peer
    held its result, against the time its own bytes need at its cap (where the two differ, the link sat idle)."""
    plt = pyplot()
    rows = report["rows"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw=dict(width_ratios=[1, 1.6, 1.6]))
    names = [row["strategy"] for row in rows]
    medians = [row["seconds"]["median"] for row in rows]
    errors = [[m - row["seconds"]["min"] for m, row in zip(medians, rows)],
              [row["seconds"]["max"] - m for m, row in zip(medians, rows)]]
    left.bar(range(len(rows)), medians, 0.6, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(rows))],
             label="measured (median)")
    left.scatter(range(len(rows)), [row["split_seconds"] for row in rows], marker="_", s=900, color="black",
                 zorder=3, label="its split at the caps")
    for bound, style in zip(report["bounds"], ("--", ":")):
        left.axhline(bound["seconds"], color="tab:red", linestyle=style, label=f"LP bound, {bound['layout']}")
    left.set_xticks(range(len(rows)), names, fontsize=8)
    left.set_ylabel("seconds per averaging round")
    size = report["settings"]["vector_size"]
    left.set_title(f"{size:,} float32 values ({size * 4 / MB:.1f} MB); whiskers: min-max", fontsize=10)
    left.legend(fontsize=7, loc="upper right")
    left.set_ylim(0, 1.35 * max(row["seconds"]["max"] for row in rows))
    peers = list(dict.fromkeys(peer["name"] for row in rows for peer in row["peers"]))
    caps = {peer["name"]: peer["mbit"] for row in rows for peer in row["peers"]}
    modes = {name: {peer["mode"] for row in rows for peer in row["peers"] if peer["name"] == name} for name in peers}
    labels = [f"{name}\n{caps[name]:g} Mbit/s" + (
        f"\n({next(iter(modes[name]))})" if len(modes[name]) == 1 and "node" not in modes[name] else "")
        for name in peers]
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        by_name = {peer["name"]: peer for peer in row["peers"]}
        xs = [position + (index - (len(rows) - 1) / 2) * width for position in range(len(peers))]
        middle.bar(xs, [(by_name[name]["tx_bytes"] or 0) / MB if name in by_name else 0.0 for name in peers], width,
                   label=row["strategy"], color=f"C{index}")
        right.bar(xs, [by_name[name]["finish_seconds"]["median"] if name in by_name else 0.0 for name in peers],
                  width, label=row["strategy"], color=f"C{index}")
        right.scatter(xs, [by_name[name]["link_seconds"] or 0.0 if name in by_name else float("nan")
                           for name in peers], marker="_", s=120, color="black", zorder=3,
                      label="its bytes at its cap (one way)" if index == 0 else None)
    for axis in (middle, right):
        axis.set_xticks(range(len(peers)), labels, fontsize=8)
        axis.legend(fontsize=7, loc="upper left")
    right.set_ylim(0, 1.3 * max(peer["finish_seconds"]["median"] for row in rows for peer in row["peers"]))
    middle.set_ylabel("MB sent per round (link counter)")
    middle.set_title("what each peer's link carried (received: about the same)", fontsize=10)
    right.set_ylabel("seconds from the round's start (median)")
    right.set_title("when each peer held the average", fontsize=10)
    fig.suptitle("Averaging strategies on capped links of the network lab (tbf, both directions)" + (
        "\nwhat-if: averages streamed back to zero-share peers while they still send (not hivemind's behaviour)"
        if report["settings"].get("overlap_results") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bounds(args: StrategiesArguments) -> list[dict]:
    """The LP bound of each layout measured: the butterfly among the peers, and the auxiliary peer's layout."""
    layouts = []
    if {"equal", "bandwidth-aware"} & set(args.strategies):
        layouts.append(("butterfly among the peers", participants(args, "equal")))
    if "parameter-server" in args.strategies:
        layouts.append(("aux peer reduces all", participants(args, "parameter-server")))
    result = []
    for layout, peers in layouts:
        seconds, shares = lp_bound(args.vector_size, peers)
        senders = sum(peer.sender for peer in peers)
        slowest = min(peer.mbit for peer in peers if peer.sender)
        floor = BITS_PER_VALUE * args.vector_size / (slowest * 1e6)  # a sender ships its whole vector at least once
        floor_binds = seconds <= floor * (1 + 1e-6)
        result.append(dict(
            layout=layout, seconds=seconds, floor_seconds=floor, floor_binds=floor_binds,
            closed_form_seconds=closed_form_bound(args.vector_size, peers) if senders == len(peers) else None,
            shares_by_peer={peer.name: max(0.0, share) for peer, share in zip(peers, shares)},
            shares=f"set by the {slowest:g} Mbit/s senders' own vectors (many splits reach it)" if floor_binds else
            ", ".join(f"{peer.name} {100 * share:.0f}%" for peer, share in zip(peers, shares) if share > 1e-9),
            # what all links carry together; it does not depend on the split (2 (S - 1) vectors, 2 S with an aux)
            payload_bytes=sum(BITS_PER_VALUE // 8 * args.vector_size * traffic(peer, share, senders)
                              for peer, share in zip(peers, shares))))
    return result


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    (args,) = parse_arguments((StrategiesArguments,), argv, description=__doc__)
    from collab.lab.netlab import NetworkLab, require_root

    require_root()  # before anything slow: the lab needs network namespaces
    machine = machine_info()
    output_dir = Path(args.output_dir).resolve()
    shutil.rmtree(output_dir, ignore_errors=True)
    rows = []
    with NetworkLab() as lab:
        build_lab(lab, args)
        for strategy in args.strategies:
            logger.info(f"Strategy {strategy}: {args.warmup_rounds} + {args.rounds} rounds of "
                        f"{args.vector_size:,} values")
            started = time.monotonic()
            reports = run_strategy(args, lab, strategy, output_dir / strategy)
            rows.append(summarize_strategy(args, strategy, reports))
            logger.info(f"Strategy {strategy}: median {rows[-1]['seconds']['median']:.2f} s per round, "
                        f"{rows[-1]['rounds_exact']} of {rows[-1]['rounds']} rounds exact "
                        f"({time.monotonic() - started:.0f} s with start-up)")
    report = dict(benchmark="strategies", machine=machine, settings=asdict(args), bounds=bounds(args), rows=rows)
    markdown = table(report)
    paths = write_results(Path(args.results_dir), args.name, report, markdown, plot)
    print(markdown)
    print(f"\nReport: {paths[0]}, plot: {paths[2]}, peer logs: {output_dir}")
    broken = [row["strategy"] for row in rows if row["rounds_exact"] == 0]
    if broken:
        raise UserError(f"no round averaged exactly with {', '.join(broken)} (see {paths[0]})")


if __name__ == "__main__":
    run_main(main)
