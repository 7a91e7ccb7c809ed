#!/usr/bin/env python3
"""Averaging cost on loopback: one all-reduce round of an ALBERT-large-sized vector among 2 and 4 processes.

For each group size, N worker processes (benchmarks/averaging_worker.py, each its own OS process) first average
with hivemind (a DHT plus a DecentralizedAverager per compression: none, fp16, 8-bit), then the same N-process
layout averages the same vector with torch.distributed's gloo all_reduce. Every round starts from the same
per-worker vectors, its result is checked against the exact mean (the error is reported; a round where a worker
did not end with the mean counts as partial), and its time runs from the moment all workers are released
(matchmaking excluded) to the moment the last one holds the result. The
machine's memory-copy rate gives a lower bound: every byte an all-reduce moves must be copied at least once.
Writes benchmarks/results/averaging.json, .md and .png.

    python benchmarks/averaging.py                                  # the committed run (a few minutes on 2 cores)
    python benchmarks/averaging.py --vector_size 1000000 --rounds 2 # a quick look
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    ALBERT_LARGE_PARAMETERS,
    free_tcp_port,
    machine_info,
    markdown_table,
    pyplot,
    summarize,
    write_results,
)
from collab.arguments import COMPRESSION_CHOICES, parse_arguments
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.swarm import LocalSwarm, PeerProcess

logger = logging.getLogger(__name__)

WORKER_SCRIPT = "benchmarks/averaging_worker.py"
GLOO = "gloo"

# What "averaged correctly" means per compression, relative to the scale of the values (standard normal here).
# none: float32 rounding only. fp16: the part sent and the averaged delta sent back are each rounded to fp16 (2^-11
# relative), so at most about 2^-10 of the largest value. 8-bit (hivemind's Uniform8BitQuantization): 256 bins over
# +-3 standard deviations of each part, so values beyond that are clipped and the *largest* error is of the order
# of the values themselves; the check is on the root-mean-square error instead.
TOLERANCES = {
    "none": dict(max_abs_error=1e-5),
    "fp16": dict(max_abs_error=2.0**-10),
    "scaled-fp16": dict(max_abs_error=2.0**-10),
    "uniform8bit": dict(rms_error=0.05),
    "quantile8bit": dict(rms_error=0.05),
    "size-adaptive": dict(rms_error=0.05),
    GLOO: dict(max_abs_error=1e-5),
}
# Whatever the compression, a round must bring every worker far closer to the mean than its own vector was:
# this catches rounds that "succeeded" without averaging (hivemind issue with numpy 2.4, see HIVEMIND-NOTES.md).
MAX_SHARE_OF_UNAVERAGED_ERROR = 0.1


@dataclass
class AveragingArguments:
    vector_size: int = field(
        default=ALBERT_LARGE_PARAMETERS,
        metadata=dict(help="float32 values averaged per round. Default: the parameter count of ALBERT-large as this "
                           "project builds it (albert/model.py preset, 30k vocabulary): 17,847,474."))
    group_sizes: list[int] = field(default_factory=lambda: [2, 4],
                                   metadata=dict(help="Numbers of worker processes averaging together."))
    compressions: list[str] = field(
        default_factory=lambda: ["none", "fp16", "uniform8bit"],
        metadata=dict(help=f"hivemind compressions to measure, any of {', '.join(COMPRESSION_CHOICES)}."))
    rounds: int = field(default=10, metadata=dict(help="Timed rounds per method and group size."))
    warmup_rounds: int = field(default=1, metadata=dict(help="Untimed rounds before them (connections, buffers)."))
    matchmaking_time: float = field(
        default=2.0, metadata=dict(help="hivemind's min_matchmaking_time; matchmaking is not part of the timing."))
    round_timeout: float = field(default=300.0, metadata=dict(help="A round that takes longer fails the run."))
    worker_threads: int = field(default=1, metadata=dict(help="torch threads per worker (workers share the cores)."))
    copy_repeats: int = field(default=5, metadata=dict(help="Repetitions of the memory-copy measurement."))
    seed: int = field(default=0, metadata=dict(help="Seed of the workers' vectors."))
    output_dir: str = field(default="outputs/averaging-benchmark",
                            metadata=dict(help="Worker logs and raw per-worker JSON."))
    results_dir: str = field(default="benchmarks/results",
                             metadata=dict(help="Where averaging.json, averaging.md and averaging.png are written."))

    def __post_init__(self) -> None:
        if self.vector_size < 1000:
            raise UserError("--vector_size must be at least 1000 (the 8-bit codebook alone is 1 KiB per part)")
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise UserError("--group_sizes: every group needs at least 2 workers")
        unknown = set(self.compressions) - set(COMPRESSION_CHOICES)
        if unknown:
            raise UserError(f"--compressions: unknown {sorted(unknown)}; choose from {', '.join(COMPRESSION_CHOICES)}")
        if self.rounds < 1 or self.warmup_rounds < 0:
            raise UserError("--rounds must be at least 1 and --warmup_rounds at least 0")


def measure_copy_rate(vector_size: int, threads: int, repeats: int) -> float:
    """Bytes per second that `threads` cores copy from one float32 buffer of this size into another."""
    import torch

    source, target = torch.randn(vector_size), torch.empty(vector_size)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        target.copy_(source)  # first touch of the target's pages is not part of the rate
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            target.copy_(source)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous_threads)
    return source.numel() * source.element_size() / summarize(times)["median"]


def wire_bytes_per_value(compression: str, part_size_bytes: int = 2**19) -> float:
    """Bytes one float32 value takes on the wire with this compression, for parts of hivemind's default size
    (after compression), headers and 8-bit codebooks included."""
    import torch
    from hivemind.compression import CompressionInfo

    from collab.optimizer import make_compression

    codec = make_compression(compression)
    values = int(part_size_bytes / (4 * codec.estimate_compression_ratio(CompressionInfo.from_tensor(torch.ones(1)))))
    part = torch.randn(values)
    return codec.compress(part, CompressionInfo.from_tensor(part)).ByteSize() / values


def allreduce_bytes_per_peer(vector_size: int, group_size: int, bytes_per_value: float) -> float:
    """A butterfly (or ring) all-reduce sends (N-1)/N of the vector out for reduction and (N-1)/N back."""
    return 2 * (group_size - 1) / group_size * vector_size * bytes_per_value


def copy_bound_seconds(vector_size: int, group_size: int, copy_rate: float) -> float:
    """A lower bound of one fp32 round: all bytes all peers send, each copied once at the measured copy rate
    of all cores together (the copy rate is measured with min(N, cores) threads)."""
    return group_size * allreduce_bytes_per_peer(vector_size, group_size, 4.0) / copy_rate


def run_workers(args: AveragingArguments, group_size: int, backend: str, run_dir: Path) -> list[dict]:
    """Start `group_size` worker processes, wait for all of them, return their JSON reports."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    common = ["--world_size", str(group_size), "--backend", backend, "--rendezvous_dir", str(run_dir),
              "--vector_size", str(args.vector_size), "--rounds", str(args.rounds), "--warmup_rounds",
              str(args.warmup_rounds), "--matchmaking_time", str(args.matchmaking_time), "--round_timeout",
              str(args.round_timeout), "--seed", str(args.seed), "--threads", str(args.worker_threads)]
    if backend == GLOO:
        common += ["--gloo_port", str(free_tcp_port())]
    else:
        common += ["--compressions", *args.compressions]
    budget = 120 + (args.warmup_rounds + args.rounds) * (args.matchmaking_time + args.round_timeout) * (
        1 if backend == GLOO else len(args.compressions))
    with LocalSwarm(run_dir / "logs") as swarm:
        workers = [swarm.start(f"rank{rank}", WORKER_SCRIPT,
                               ["--rank", str(rank), "--output", str(run_dir / f"rank{rank}.json"), *common])
                   for rank in range(group_size)]
        wait_for_workers(workers, budget, f"{backend} workers of group size {group_size}")
    return [json.loads((run_dir / f"rank{rank}.json").read_text()) for rank in range(group_size)]


def wait_for_workers(workers: list[PeerProcess], timeout: float, what: str) -> None:
    """Until every worker exited; the first one that fails ends the wait with its log tail."""
    deadline = time.monotonic() + timeout
    while True:
        failed = [worker for worker in workers if not worker.alive and worker.popen.returncode != 0]
        if failed:
            raise RuntimeError(f"{what}: {failed[0].name} exited with code {failed[0].popen.returncode}; last "
                               f"lines of {failed[0].log_path}:\n{failed[0].log_tail()}")
        if not any(worker.alive for worker in workers):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still running after {timeout:.0f}s")
        time.sleep(0.2)


def summarize_method(method: str, compression: str, reports: list[dict]) -> dict:
    """One method's timed rounds across all workers. A round lasts from the first worker's start to the last one's
    end; it is complete when every worker ended within the compression's tolerance of the exact mean. Errors are
    those of the complete rounds; incomplete ones (a worker kept part of its own values) are listed apart."""
    timed: dict[int, list[dict]] = {}
    for report in reports:
        for entry in report["rounds"]:
            if entry["method"] == method and not entry["warmup"]:
                timed.setdefault(entry["round"], []).append(entry)
    scale = dict(unaveraged_rms=min(report["unaveraged"]["rms_error"] for report in reports),
                 value_max=max(report["value_scale"]["max_abs"] for report in reports),
                 value_rms=max(report["value_scale"]["rms"] for report in reports))
    tolerance = TOLERANCES[compression]
    complete = {index: entries for index, entries in timed.items()
                if len(entries) == len(reports) and all(within_tolerance(e, tolerance, scale, len(reports))
                                                        for e in entries)}
    incomplete = [dict(round=e["round"], rank=rank, max_abs_error=e["max_abs_error"], rms_error=e["rms_error"])
                  for index, entries in timed.items() if index not in complete
                  for rank, e in enumerate(entries) if not within_tolerance(e, tolerance, scale, len(reports))]
    checked = [e for entries in complete.values() for e in entries]
    round_seconds = [max(e["end"] for e in entries) - min(e["start"] for e in entries) for entries in timed.values()]
    return dict(method=method, compression=compression, round_seconds=round_seconds,
                seconds=summarize(round_seconds), rounds=len(timed), rounds_complete=len(complete),
                incomplete=incomplete,
                max_abs_error=max((e["max_abs_error"] for e in checked), default=None),
                rms_error=max((e["rms_error"] for e in checked), default=None),
                unaveraged_rms_error=scale["unaveraged_rms"], value_max_abs=scale["value_max"],
                value_rms=scale["value_rms"], tolerance=tolerance, averaged_correctly=len(complete) == len(timed))


def within_tolerance(entry: dict, tolerance: dict, scale: dict, group_size: int) -> bool:
    """Did this worker end the round holding the mean of the whole group, up to the compression's error?"""
    checks = [entry["peers"] == group_size,
              entry["rms_error"] <= MAX_SHARE_OF_UNAVERAGED_ERROR * scale["unaveraged_rms"]]
    if "max_abs_error" in tolerance:
        checks.append(entry["max_abs_error"] <= tolerance["max_abs_error"] * scale["value_max"])
    if "rms_error" in tolerance:
        checks.append(entry["rms_error"] <= tolerance["rms_error"] * scale["value_rms"])
    return all(checks)


def measure_group(args: AveragingArguments, group_size: int, copy_rate: float, bytes_per_value: dict,
                  output_dir: Path) -> list[dict]:
    logger.info(f"Group of {group_size}: hivemind ({', '.join(args.compressions)})")
    hivemind_reports = run_workers(args, group_size, "hivemind", output_dir / f"hivemind-{group_size}")
    logger.info(f"Group of {group_size}: gloo")
    gloo_reports = run_workers(args, group_size, GLOO, output_dir / f"gloo-{group_size}")
    rows = [summarize_method(f"hivemind-{name}", name, hivemind_reports) for name in args.compressions]
    rows.append(summarize_method(GLOO, GLOO, gloo_reports))
    gloo_seconds = rows[-1]["seconds"]["median"]
    bound = copy_bound_seconds(args.vector_size, group_size, copy_rate)
    for row in rows:
        per_value = bytes_per_value.get(row["compression"], 4.0)  # gloo sends raw float32
        row.update(group_size=group_size, bound_seconds=bound,
                   bytes_sent_per_peer=allreduce_bytes_per_peer(args.vector_size, group_size, per_value),
                   ratio_to_gloo=row["seconds"]["median"] / gloo_seconds,
                   ratio_to_bound=row["seconds"]["median"] / bound)
    return rows


def table(report: dict) -> str:
    header = ["peers", "method", "s/round median (min-max)", "x gloo", "x copy bound", "MB sent per peer",
              "max abs error", "rms error", "rounds averaged completely"]
    rows = []
    for row in report["rows"]:
        seconds = row["seconds"]
        rows.append([row["group_size"], row["method"],
                     f"{seconds['median']:.3f} ({seconds['min']:.3f}-{seconds['max']:.3f})",
                     f"{row['ratio_to_gloo']:.2f}", f"{row['ratio_to_bound']:.1f}",
                     f"{row['bytes_sent_per_peer'] / 1e6:.1f}", _error(row["max_abs_error"]), _error(row["rms_error"]),
                     _completeness(row)])
    for group_size in report["settings"]["group_sizes"]:
        bound = next(row["bound_seconds"] for row in report["rows"] if row["group_size"] == group_size)
        rows.append([group_size, "memory-copy bound", f"{bound:.3f}", "", "1.0",
                     f"{allreduce_bytes_per_peer(report['settings']['vector_size'], group_size, 4.0) / 1e6:.1f}",
                     "", "", ""])
    rows.sort(key=lambda row: row[0])  # stable: each group's rows stay in order, the bound last
    return markdown_table(header, rows)


def _error(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _completeness(row: dict) -> str:
    text = f"{row['rounds_complete']} of {row['rounds']}"
    if row["incomplete"]:
        worst = max(row["incomplete"], key=lambda entry: entry["rms_error"])
        text += f" (**{row['rounds'] - row['rounds_complete']} partial**: worst rms error {worst['rms_error']:.2g})"
    return text


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    methods = list(dict.fromkeys(row["method"] for row in report["rows"])) + ["memory-copy bound"]
    group_sizes = report["settings"]["group_sizes"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        xs, medians, low, high = [], [], [], []
        for position, group_size in enumerate(group_sizes):
            rows = [row for row in report["rows"] if row["group_size"] == group_size]
            if method == "memory-copy bound":
                median = lo = hi = rows[0]["bound_seconds"]
            else:
                seconds = next(row["seconds"] for row in rows if row["method"] == method)
                median, lo, hi = seconds["median"], seconds["min"], seconds["max"]
            xs.append(position + (index - (len(methods) - 1) / 2) * width)
            medians.append(median)
            low.append(median - lo)
            high.append(hi - median)
        bound = method == "memory-copy bound"
        ax.bar(xs, medians, width, yerr=None if bound else [low, high], capsize=3, label=method,
               color="lightgray" if bound else None, edgecolor="black" if bound else None)
    ax.set_xticks(range(len(group_sizes)), [f"{n} peers" for n in group_sizes])
    ax.set_yscale("log")  # the bound, gloo and hivemind lie orders of magnitude apart
    ax.set_ylabel("seconds per averaging round (log scale)")
    ax.set_title(f"Averaging {report['settings']['vector_size'] / 1e6:.1f}M float32 values on loopback "
                 f"({report['machine']['cpus_usable']} cores); bars: median, whiskers: min-max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    (args,) = parse_arguments((AveragingArguments,), argv, description=__doc__)
    machine = machine_info()
    output_dir = Path(args.output_dir).resolve()
    threads = {n: min(n, machine["cpus_usable"]) for n in args.group_sizes}
    rate_by_threads = {count: measure_copy_rate(args.vector_size, count, args.copy_repeats)
                       for count in sorted(set(threads.values()))}
    copy_rates = {n: rate_by_threads[threads[n]] for n in args.group_sizes}
    with warnings.catch_warnings():  # torch deprecates the quantize_per_tensor that hivemind's 8-bit codec calls
        warnings.simplefilter("ignore", UserWarning)
        bytes_per_value = {name: wire_bytes_per_value(name) for name in args.compressions}
    rows = []
    for group_size in args.group_sizes:
        rows += measure_group(args, group_size, copy_rates[group_size], bytes_per_value, output_dir)
    report = dict(benchmark="averaging", machine=machine, settings=vars(args),
                  copy_rate_bytes_per_s={str(n): rate for n, rate in copy_rates.items()},
                  wire_bytes_per_value=bytes_per_value, rows=rows)
    markdown = table(report)
    paths = write_results(Path(args.results_dir), "averaging", report, markdown, plot)
    print(markdown)
    print(f"\nReport: {paths[0]}, plot: {paths[2]}, worker logs: {output_dir}")
    partial = [f"{row['method']} with {row['group_size']} peers: {row['rounds'] - row['rounds_complete']} of "
               f"{row['rounds']}" for row in rows if row["incomplete"]]
    if partial:
        logger.warning(f"Rounds where a worker did not end with the mean: {'; '.join(partial)}")
    broken = [f"{row['method']} with {row['group_size']} peers" for row in rows if row["rounds_complete"] == 0]
    if broken:  # not a slow or unlucky round: this method does not average here at all (see HIVEMIND-NOTES.md)
        raise UserError(f"no round averaged correctly: {', '.join(broken)} (see {paths[0]})")


if __name__ == "__main__":
    run_main(main)
