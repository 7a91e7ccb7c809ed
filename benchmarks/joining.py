#!/usr/bin/env python3
"""Joining cost: how long a new peer takes to download the training state of ALBERT-large, against the bytes it
moves and the rate of the link.

A donor process holds the training state as the project builds it (albert/model.py's albert-large, LAMB from
collab/optimizer.py's SwarmOptimizer, filled with non-zero values); a joiner process downloads it the way a new
trainer does, through the project's own path (SwarmOptimizer.load_state_from_peers: parameters and LAMB statistics
from the state averager), --downloads times, checking each time that the state arrived bit for bit. The joiner
counts what each of its averagers received (a hook on hivemind's DecentralizedAverager.load_state_from_peers, which
every state download goes through) and, on capped links, the bytes that came in on its network interface. A join
moves the state only: hivemind's Optimizer also downloads the gradient averager's buffers (a quarter more bytes,
then discarded), which SwarmOptimizer no longer does; the report shows how many such downloads happened (0). The
same number of bytes then goes through a plain TCP connection between two processes: the link's own rate.
On loopback by default; with --bandwidth_mbit (root), donor and joiner sit on capped links of the network lab
(collab/lab/netlab.py). Writes benchmarks/results/joining.json, .md and .png (--name changes the file names).

    python benchmarks/joining.py                            # the committed run: albert-large on loopback (~1 min)
    python benchmarks/joining.py --bandwidth_mbit 100 --downloads 2 --transfers 2 --name joining-100mbit  # root
    python benchmarks/joining.py --bandwidth_mbit 1000 --downloads 3 --transfers 3 --name joining-1000mbit  # root
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import free_tcp_port, machine_info, markdown_table, pyplot, summarize, write_results
from collab.arguments import COMPRESSION_CHOICES, parse_arguments
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.swarm import LocalSwarm, PeerProcess

logger = logging.getLogger(__name__)

WORKER_SCRIPT = "benchmarks/joining_worker.py"
MB = 1e6


@dataclass
class JoiningArguments:
    model_preset: str = field(default="albert-large",
                              metadata=dict(help="albert/model.py preset whose state is downloaded (albert-tiny: "
                                                 "a quick look)."))
    vocab_size: int = field(default=30000, metadata=dict(help="Vocabulary of the model (albert-large-v2: 30000)."))
    compression: str = field(
        default="none",
        metadata=dict(help="The peers' --compression. It applies to averaging only: the project downloads state "
                           "uncompressed either way.", choices=list(COMPRESSION_CHOICES)))
    downloads: int = field(default=5, metadata=dict(help="Downloads of the training state by the joiner, one after "
                                                         "another (the first one is what a new peer pays)."))
    transfers: int = field(default=5, metadata=dict(help="Plain TCP transfers of the same bytes."))
    bandwidth_mbit: Optional[float] = field(
        default=None, metadata=dict(help="Cap donor's and joiner's links at this rate (Mbit/s, both directions) in "
                                         "the network lab; needs root, ip and tc. Default: loopback, no cap."))
    startup_timeout: float = field(default=600.0, metadata=dict(help="Seconds a process may take to get ready."))
    download_timeout: float = field(default=1800.0, metadata=dict(help="Seconds all downloads together may take."))
    seed: int = field(default=0, metadata=dict(help="Seed of the donor's state."))
    name: str = field(default="joining", metadata=dict(help="Base name of the result files."))
    output_dir: str = field(default="outputs/joining-benchmark", metadata=dict(help="Process logs and raw JSON."))
    results_dir: str = field(default="benchmarks/results",
                             metadata=dict(help="Where <name>.json, <name>.md and <name>.png are written."))

    def __post_init__(self) -> None:
        if self.downloads < 1 or self.transfers < 1:
            raise UserError("--downloads and --transfers must be at least 1")
        if self.bandwidth_mbit is not None and self.bandwidth_mbit <= 0:
            raise UserError("--bandwidth_mbit must be positive")


class Placement:
    """Where the donor's and the joiner's processes run: both on loopback, or on two capped hosts of a lab."""

    def __init__(self, lab=None):
        self.lab = lab

    def address(self, host: str) -> str:
        return "127.0.0.1" if self.lab is None else self.lab.address(host)

    def start(self, swarm: LocalSwarm, name: str, host: str, args: list[str]) -> PeerProcess:
        if self.lab is None:
            return swarm.start(name, WORKER_SCRIPT, args)
        return swarm.start(name, WORKER_SCRIPT, args, wrap=partial(self.lab.command, host))


def wait_for_exit(process: PeerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process.alive:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} still running after {timeout:.0f}s; log: {process.log_path}")
        time.sleep(0.2)
    if process.popen.returncode != 0:
        raise RuntimeError(f"{process.name} exited with code {process.popen.returncode}; last lines of "
                           f"{process.log_path}:\n{process.log_tail()}")


def wait_for_output(swarm: LocalSwarm, process: PeerProcess, path: Path, timeout: float) -> dict:
    """The JSON a worker writes once it is ready (fails early with its log tail if it dies first)."""
    return json.loads(swarm.wait_for_file(path, timeout, watch=[process]))


def measure_tcp(args: JoiningArguments, swarm: LocalSwarm, placement: Placement, run_dir: Path, nbytes: int) -> dict:
    """Plain TCP from the donor's host to the joiner's (the state's direction), one process at each end."""
    port = free_tcp_port()
    common = ["--nbytes", str(nbytes), "--transfers", str(args.transfers), "--port", str(port)]
    receiver = placement.start(swarm, "tcp-receiver", "joiner", [
        "--role", "tcp_receiver", "--output", str(run_dir / "tcp-receiver.json"),
        "--listen_host", placement.address("joiner"), *common])
    wait_for_output(swarm, receiver, run_dir / "tcp-receiver.json", args.startup_timeout)
    sender = placement.start(swarm, "tcp-sender", "donor", [
        "--role", "tcp_sender", "--output", str(run_dir / "tcp-sender.json"),
        "--connect_host", placement.address("joiner"), *common])
    wait_for_exit(sender, args.download_timeout)
    wait_for_exit(receiver, 60)
    return json.loads((run_dir / "tcp-sender.json").read_text())


def run(args: JoiningArguments, placement: Placement, run_dir: Path) -> dict:
    model = ["--model_preset", args.model_preset, "--vocab_size", str(args.vocab_size), "--compression",
             args.compression, "--seed", str(args.seed)]
    donor_info = run_dir / "donor.json"
    with LocalSwarm(run_dir / "logs") as swarm:
        donor = placement.start(swarm, "donor", "donor", ["--role", "donor", "--output", str(donor_info),
                                                          "--listen_host", placement.address("donor"), *model])
        donor_report = wait_for_output(swarm, donor, donor_info, args.startup_timeout)
        join_bytes = donor_report["state_bytes"]  # what a join moves: the state, not the gradient buffers
        logger.info(f"Donor ready: {donor_report['state_bytes'] / MB:.1f} MB of state (its "
                    f"{donor_report['gradient_bytes'] / MB:.1f} MB of gradient buffers are not downloaded); plain TCP "
                    f"first")
        tcp = measure_tcp(args, swarm, placement, run_dir, join_bytes)
        logger.info(f"Plain TCP: {[round(s, 3) for s in tcp['seconds']]} s; now the joiner")
        launched = time.time()
        joiner = placement.start(swarm, "joiner", "joiner", [
            "--role", "joiner", "--output", str(run_dir / "joiner.json"), "--donor_info", str(donor_info),
            "--listen_host", placement.address("joiner"), "--downloads", str(args.downloads),
            "--load_state_timeout", str(args.download_timeout), *model,
            *(["--count_interface_bytes"] if placement.lab is not None else [])])
        wait_for_exit(joiner, args.startup_timeout + args.download_timeout)
        joiner_report = json.loads((run_dir / "joiner.json").read_text())
    return dict(donor=donor_report, tcp=tcp, joiner=joiner_report, joiner_launched=launched)


def analyse(raw: dict) -> dict:
    """Rates and ratios from the processes' raw reports."""
    donor, joiner, tcp = raw["donor"], raw["joiner"], raw["tcp"]
    state_bytes, gradient_bytes = donor["state_bytes"], donor["gradient_bytes"]
    downloads = joiner["downloads"]
    tcp_seconds = summarize(tcp["seconds"])
    tcp_rate = tcp["nbytes"] / tcp_seconds["median"]
    received = summarize([d["received_bytes"] for d in downloads])
    join_bytes = received["median"]  # measured: what the joiner's averagers received per join
    totals = summarize([d["total_s"] for d in downloads])
    state_s = summarize([d["state_s"] for d in downloads])
    state_load_s = summarize([d["state_load_s"] for d in downloads])
    wire = [d["interface_rx_bytes"] for d in downloads if d.get("interface_rx_bytes") is not None]
    first = downloads[0]
    return dict(
        parameters=donor["parameters"], state_bytes=state_bytes, state_tensors=donor["state_tensors"],
        gradient_buffer_bytes=gradient_bytes, join_bytes=join_bytes, received_bytes=received,
        state_downloads=sum(d["state_downloads"] for d in downloads),
        gradient_downloads=sum(d["gradient_downloads"] for d in downloads),
        gradient_received_bytes=sum(d["gradient_received_bytes"] for d in downloads),
        other_downloads=sum(d.get("other_downloads", 0) for d in downloads),
        every_join_moved_the_state_only=all(
            d["received_bytes"] == d["state_received_bytes"] == state_bytes and d["state_downloads"] == 1
            and d["gradient_downloads"] == 0 for d in downloads),
        interface_rx_bytes=summarize(wire) if wire else None,
        interface_rx_to_state=summarize(wire)["median"] / state_bytes if wire else None,
        first_download_s=first["total_s"], first_state_s=first["state_s"], first_state_load_s=first["state_load_s"],
        download_s=totals, state_s=state_s, state_load_s=state_load_s,
        download_rate_mb_s=join_bytes / totals["median"] / MB,
        state_rate_mb_s=state_bytes / state_s["median"] / MB,
        tcp_s=tcp_seconds, tcp_rate_mb_s=tcp_rate / MB, tcp_time_for_join_bytes_s=join_bytes / tcp_rate,
        ratio_to_tcp=totals["median"] / (join_bytes / tcp_rate),
        all_loaded=all(d["loaded"] for d in downloads),
        all_match_donor=all(d["state_matches_donor"] for d in downloads),
        joiner_startup_s=joiner["peer_ready"] - raw["joiner_launched"],
    )


def table(report: dict) -> str:
    result = report["result"]
    cap = report["settings"]["bandwidth_mbit"]
    link = ("loopback (127.0.0.1)" if cap is None
            else f"network lab, links capped at {cap:g} Mbit/s ({cap / 8:.3g} MB/s)")
    wire = result["interface_rx_bytes"]
    rows = [
        ("link", link),
        ("model / parameters", f"{report['settings']['model_preset']} / {result['parameters']:,}"),
        ("state: parameters + LAMB exp_avg + exp_avg_sq (MB, fp32)",
         f"{result['state_bytes'] / MB:.1f} ({result['state_tensors']} tensors)"),
        ("bytes received per join, measured (MB)", f"{result['join_bytes'] / MB:.1f}"),
        (f"gradient averager's buffers ({result['gradient_buffer_bytes'] / MB:.1f} MB; hivemind's Optimizer "
         f"downloads them too): downloads, all joins", f"{result['gradient_downloads']}"),
        ("bytes in on the joiner's interface per join, all traffic (MB; x state)",
         "n/a on loopback" if wire is None else f"{wire['median'] / MB:.1f} (x{result['interface_rx_to_state']:.3f})"),
        ("first download: total / state averager's whole download / its receiving part (s)",
         f"{result['first_download_s']:.2f} / {result['first_state_load_s']:.2f} / {result['first_state_s']:.2f}"),
        ("all downloads: median (min-max) (s)", _spread(result["download_s"])),
        ("effective rate of a join (MB/s)", _rate(result["download_rate_mb_s"])),
        ("plain TCP, same bytes: median (min-max) (s)", _spread(result["tcp_s"])),
        ("plain TCP rate (MB/s)", _rate(result["tcp_rate_mb_s"])),
        ("join download time / plain TCP time", f"{result['ratio_to_tcp']:.2f}"),
        ("state arrived bit for bit, every download", "yes" if result["all_match_donor"] else "**NO**"),
        ("joiner start-up: process start to optimizer built (s)", f"{result['joiner_startup_s']:.1f}"),
    ]
    return markdown_table(["measure", "value"], rows)


def _rate(mb_per_s: float) -> str:
    return f"{mb_per_s:,.0f}" if mb_per_s >= 100 else f"{mb_per_s:.1f}"


def _spread(seconds: dict) -> str:
    return f"{seconds['median']:.2f} ({seconds['min']:.2f}-{seconds['max']:.2f})"


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    raw, result = report["raw"], report["result"]
    downloads = raw["joiner"]["downloads"]
    transfers = len(raw["tcp"]["seconds"])
    labels = [f"join {d['index'] + 1}" for d in downloads] + [f"TCP {i + 1}" for i in range(transfers)]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    xs = range(len(labels))
    pad = [0.0] * transfers
    receive = [d["state_s"] for d in downloads] + pad
    load = [d["state_load_s"] - d["state_s"] for d in downloads] + pad
    rest = [d["total_s"] - d["state_load_s"] for d in downloads] + pad
    tcp = [0.0] * len(downloads) + raw["tcp"]["seconds"]
    ax.bar(xs, receive, label=f"receiving the state: parameters + LAMB ({result['state_bytes'] / MB:.0f} MB)",
           color="tab:blue")
    ax.bar(xs, load, bottom=receive, label="loading it into the model and LAMB", color="tab:cyan")
    rest_label = ("rest of SwarmOptimizer.load_state_from_peers (no gradient buffers)"
                  if result["gradient_downloads"] == 0 else "rest, including the gradient buffers' download")
    ax.bar(xs, rest, bottom=[r + l for r, l in zip(receive, load)], label=rest_label, color="tab:gray")
    ax.bar(xs, tcp, label=f"plain TCP, same {result['join_bytes'] / MB:.0f} MB", color="tab:green")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("seconds")
    cap = report["settings"]["bandwidth_mbit"]
    link = "loopback" if cap is None else f"{cap:g} Mbit/s"
    ax.set_title(f"Joining: downloading the {report['settings']['model_preset']} training state ({link})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    (args,) = parse_arguments((JoiningArguments,), argv, description=__doc__)
    machine = machine_info()
    run_dir = Path(args.output_dir).resolve() / args.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if args.bandwidth_mbit is None:
        raw = run(args, Placement(), run_dir)
    else:
        raw = run_in_lab(args, lambda lab: run(args, Placement(lab), run_dir))
    report = dict(benchmark="joining", machine=machine, settings=vars(args), result=analyse(raw), raw=raw)
    markdown = table(report)
    paths = write_results(Path(args.results_dir), args.name, report, markdown, plot)
    print(markdown)
    print(f"\nReport: {paths[0]}, plot: {paths[2]}, logs: {run_dir / 'logs'}")
    if not (report["result"]["all_loaded"] and report["result"]["all_match_donor"]):
        raise UserError(f"a download did not deliver the donor's state (see {paths[0]})")
    if not report["result"]["every_join_moved_the_state_only"]:
        logger.warning(f"A join received more than the state (gradient buffers: "
                       f"{report['result']['gradient_downloads']} download(s)); see {paths[0]}")


def run_in_lab(args: JoiningArguments, body: Callable) -> dict:
    """Donor and joiner on two public hosts of a network lab, each link capped at --bandwidth_mbit."""
    from collab.lab.netlab import NetworkLab

    with NetworkLab() as lab:
        lab.add_public_host("donor", bandwidth_mbit=args.bandwidth_mbit)
        lab.add_public_host("joiner", bandwidth_mbit=args.bandwidth_mbit)
        return body(lab)


if __name__ == "__main__":
    run_main(main)
