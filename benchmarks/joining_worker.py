#!/usr/bin/env python3
"""One process of benchmarks/joining.py.

--role donor: a peer holding the full training state of ALBERT-large (parameters and LAMB statistics, built by the
project's own albert/model.py and collab/optimizer.py), offering it for download until it is stopped.
--role joiner: a new peer that downloads that state the way a new trainer does (SwarmOptimizer.load_state_from_peers),
several times, timing each download, counting what each of its averagers received (hivemind's
DecentralizedAverager.load_state_from_peers, which every state download goes through) and, on a lab host, the bytes
that came in on its network interface, and checking that what arrived equals the donor's state bit for bit.
--role tcp_receiver / tcp_sender: a plain TCP transfer of the same number of bytes, for the link's own rate.

Every role writes what it measured to --output (JSON). Started by benchmarks/joining.py; not meant to be run by hand.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import wait_for_path, write_atomically
from collab.arguments import COMPRESSION_CHOICES, parse_arguments
from collab.cli import check_stop, run_main, setup_logging

logger = logging.getLogger(__name__)

RUN_ID = "joining_benchmark"
DONOR_EPOCH = 1000  # the donor's global step: ahead of the joiner's 0, so the joiner accepts its state
TCP_CHUNK = 4 << 20


@dataclass
class JoiningWorkerArguments:
    role: str = field(metadata=dict(help="donor, joiner, tcp_receiver or tcp_sender.",
                                    choices=["donor", "joiner", "tcp_receiver", "tcp_sender"]))
    output: str = field(metadata=dict(help="Where this process writes what it measured (JSON)."))
    model_preset: str = field(default="albert-large", metadata=dict(help="albert/model.py preset of the state."))
    vocab_size: int = field(default=30000, metadata=dict(help="Vocabulary of the model (albert-large-v2: 30000)."))
    compression: str = field(default="none", metadata=dict(
        help="--compression of the peers (averaging; the state download itself is never compressed by the project).",
        choices=list(COMPRESSION_CHOICES)))
    listen_host: str = field(default="127.0.0.1", metadata=dict(help="Address this process listens on."))
    donor_info: str = field(default="", metadata=dict(help="joiner: the donor's --output (its address and digests)."))
    downloads: int = field(default=3, metadata=dict(help="joiner: downloads of the full state, one after another."))
    load_state_timeout: float = field(default=600.0, metadata=dict(help="joiner: seconds one download may take."))
    count_interface_bytes: bool = field(default=False, metadata=dict(
        help="joiner: also count the bytes received on this host's network interfaces (all but lo) during each "
             "download; meaningful on a network-lab host only, where they carry nothing but this peer's traffic."))
    nbytes: int = field(default=0, metadata=dict(help="tcp_*: bytes per transfer."))
    transfers: int = field(default=3, metadata=dict(help="tcp_*: transfers, one after another."))
    port: int = field(default=0, metadata=dict(help="tcp_*: the receiver's port."))
    connect_host: str = field(default="127.0.0.1", metadata=dict(help="tcp_sender: the receiver's address."))
    seed: int = field(default=0, metadata=dict(help="Seed of the donor's state (the joiner uses another)."))


# ---------------------------------------------------------------------------------------------- training state


def build_peer(args: JoiningWorkerArguments, initial_peers: Sequence[str], seed: int):
    """A DHT and the project's collaborative optimizer around the model, exactly as a trainer builds them."""
    import torch

    from albert.model import build_model, make_optimizer_factory, make_scheduler_factory, model_config, parameter_groups
    from collab.arguments import (
        AveragerArguments,
        CollaborationArguments,
        PeerArguments,
        ProgressTrackerArguments,
        TrainingArguments,
    )
    from collab.optimizer import create_optimizer
    from collab.peer import create_dht

    torch.manual_seed(seed)
    model = build_model(model_config(args.model_preset, vocab_size=args.vocab_size, pad_token_id=0))
    training = TrainingArguments()
    peer = PeerArguments(run_id=RUN_ID, initial_peers=list(initial_peers),
                         host_maddrs=[f"/ip4/{args.listen_host}/tcp/0"])
    collab = CollaborationArguments(compression=args.compression, load_state_timeout=args.load_state_timeout,
                                    load_state_attempts=1)
    dht = create_dht(peer)
    optimizer = create_optimizer(
        dht=dht, peer=peer, collab=collab, averager=AveragerArguments(), tracker=ProgressTrackerArguments(),
        params=parameter_groups(model, training.weight_decay), optimizer_factory=make_optimizer_factory(training),
        scheduler_factory=make_scheduler_factory(training), batch_size_per_step=training.per_device_train_batch_size,
    )
    return dht, model, optimizer


def state_tensors(optimizer) -> list:
    """What a new peer downloads from the state averager: parameters, then LAMB's exp_avg and exp_avg_sq."""
    _, tensors, _ = optimizer.state_averager.get_current_state()
    return list(tensors)


def gradient_buffers(optimizer) -> list:
    """The gradient averager's buffers, which hivemind's Optimizer also downloads on a join and then discards;
    SwarmOptimizer._download_state no longer does (the joiner counts it: gradient_downloads must stay 0)."""
    _, tensors, _ = optimizer.grad_averager.get_current_state()
    return list(tensors)


def nbytes(tensors: Sequence) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def digest(tensors: Sequence) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def fill_with_trained_looking_state(optimizer, seed: int) -> None:
    """Non-zero parameters and LAMB moments, so that a download that left anything at its initial value shows
    up in the digest (a fresh LAMB has all-zero moments, which a failed copy would also produce)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    averager = optimizer.state_averager
    with torch.no_grad(), averager.lock_averaged_tensors:
        for group in averager.optimizer.param_groups:
            for param in group["params"]:
                param.add_(torch.randn(param.shape, generator=generator), alpha=1e-3)
                state = averager.optimizer.state[param]
                state["exp_avg"].copy_(torch.randn(param.shape, generator=generator)).mul_(1e-3)
                state["exp_avg_sq"].copy_(torch.rand(param.shape, generator=generator)).mul_(1e-6)


def run_donor(args: JoiningWorkerArguments) -> None:
    dht, _, optimizer = build_peer(args, initial_peers=[], seed=args.seed)
    try:
        fill_with_trained_looking_state(optimizer, args.seed)
        optimizer.state_averager.local_epoch = DONOR_EPOCH  # its global step, which state downloads compare
        optimizer.state_averager.state_sharing_priority = DONOR_EPOCH
        optimizer.grad_averager.state_sharing_priority = DONOR_EPOCH
        state, grads = state_tensors(optimizer), gradient_buffers(optimizer)
        write_atomically(Path(args.output), json.dumps(dict(
            maddrs=[str(address) for address in dht.get_visible_maddrs()], epoch=DONOR_EPOCH,
            state_digest=digest(state), state_bytes=nbytes(state), state_tensors=len(state),
            state_values=sum(tensor.numel() for tensor in state), gradient_bytes=nbytes(grads),
            parameters=sum(param.numel() for group in optimizer.param_groups for param in group["params"]),
        )))
        logger.info(f"Donor ready: {nbytes(state) / 1e6:.1f} MB of state, {nbytes(grads) / 1e6:.1f} MB of "
                       f"gradient buffers")
        while True:  # serve downloads until the harness stops this process (SIGTERM)
            check_stop()
            time.sleep(0.5)
    finally:
        optimizer.shutdown()
        dht.shutdown()


class DownloadRecorder:
    """Sees every state download of this process: hooks hivemind's DecentralizedAverager.load_state_from_peers,
    which the state averager's download (and the gradient averager's, if anything still asked for it) goes through,
    whoever calls it. Per averager: downloads, seconds, and the bytes of the tensors that came back."""

    def __init__(self, averagers: dict):
        from hivemind.averaging.averager import DecentralizedAverager

        self.cls, self.averagers, self.record = DecentralizedAverager, averagers, {}
        self.original = DecentralizedAverager.__dict__["load_state_from_peers"]

    def start(self) -> dict:
        """A fresh record for the next download: {averager name: dict(downloads, seconds, received_bytes)}."""
        self.record = {name: dict(downloads=0, seconds=0.0, received_bytes=0) for name in self.averagers}
        return self.record

    def __enter__(self) -> "DownloadRecorder":
        recorder, original = self, self.original

        def load_state_from_peers(averager, *args, **kwargs):
            name = next((name for name, known in recorder.averagers.items() if known is averager), "other")
            entry = recorder.record.setdefault(name, dict(downloads=0, seconds=0.0, received_bytes=0))
            started, result = time.perf_counter(), None
            try:
                result = original(averager, *args, **kwargs)
                return result
            finally:
                entry["downloads"] += 1
                entry["seconds"] += time.perf_counter() - started
                if isinstance(result, tuple):  # (metadata, tensors); None when nothing arrived
                    entry["received_bytes"] += nbytes(result[1])

        self.cls.load_state_from_peers = load_state_from_peers
        return self

    def __exit__(self, *exc) -> None:
        self.cls.load_state_from_peers = self.original


def timed(method: Callable, record: dict, key: str) -> Callable:
    """Wrap a bound method so that each call adds its duration to record[key]."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            record[key] = record.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def interface_rx_bytes() -> int:
    """Bytes received so far on this network namespace's interfaces, lo excepted (/proc/net/dev)."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, counters = line.split(":", 1)
        if name.strip() != "lo":
            total += int(counters.split()[0])
    return total


def run_joiner(args: JoiningWorkerArguments) -> None:
    import torch

    main_started = time.time()
    wait_for_path(Path(args.donor_info), timeout=600)
    donor = json.loads(Path(args.donor_info).read_text())
    dht, _, optimizer = build_peer(args, initial_peers=donor["maddrs"], seed=args.seed + 1)
    ready, downloads = time.time(), []
    recorder = DownloadRecorder(dict(state=optimizer.state_averager, gradients=optimizer.grad_averager))
    try:
        wait_until(lambda: bool(optimizer.state_averager.donors()), timeout=120, what="the donor's state record")
        load_times: dict = {}  # the state averager's whole download: receiving, then loading into model and LAMB
        state_averager = optimizer.state_averager
        state_averager.load_state_from_peers = timed(state_averager.load_state_from_peers, load_times, "state_load_s")
        with recorder:
            for index in range(args.downloads):
                load_times.clear()
                with torch.no_grad():  # forget the previous download, so that each one is checked on its own
                    for tensor in state_tensors(optimizer):
                        tensor.zero_()
                averagers = recorder.start()
                rx_before = interface_rx_bytes() if args.count_interface_bytes else None
                started = time.perf_counter()
                loaded = optimizer.load_state_from_peers()  # the project's path: SwarmOptimizer._download_state
                total = time.perf_counter() - started
                rx = interface_rx_bytes() - rx_before if args.count_interface_bytes else None
                state, grads = averagers["state"], averagers["gradients"]
                record = dict(
                    index=index, total_s=total, loaded=bool(loaded), epoch=optimizer.local_epoch,
                    state_matches_donor=digest(state_tensors(optimizer)) == donor["state_digest"],
                    state_s=state["seconds"], state_load_s=load_times.get("state_load_s", 0.0),
                    state_downloads=state["downloads"],
                    state_received_bytes=state["received_bytes"], gradient_downloads=grads["downloads"],
                    gradient_received_bytes=grads["received_bytes"],
                    received_bytes=sum(entry["received_bytes"] for entry in averagers.values()),
                    other_downloads=averagers.get("other", {}).get("downloads", 0), interface_rx_bytes=rx)
                downloads.append(record)
                logger.info(f"Download {index}: {record}")
    finally:
        write_atomically(Path(args.output), json.dumps(dict(
            downloads=downloads, main_started=main_started, peer_ready=ready,
            state_bytes=nbytes(state_tensors(optimizer)), gradient_bytes=nbytes(gradient_buffers(optimizer)))))
        optimizer.shutdown()
        dht.shutdown()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        check_stop()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- plain TCP


def run_tcp_receiver(args: JoiningWorkerArguments) -> None:
    """Accept --transfers connections; read --nbytes from each into one buffer, then acknowledge with one byte."""
    buffer = bytearray(args.nbytes)
    view = memoryview(buffer)
    with socket.create_server((args.listen_host, args.port)) as server:
        write_atomically(Path(args.output), json.dumps(dict(listening=True)))
        for _ in range(args.transfers):
            connection, _ = server.accept()
            with connection:
                received = 0
                while received < args.nbytes:
                    count = connection.recv_into(view[received:], min(TCP_CHUNK, args.nbytes - received))
                    if count == 0:
                        raise ConnectionError(f"sender closed after {received} of {args.nbytes} bytes")
                    received += count
                connection.sendall(b"k")


def run_tcp_sender(args: JoiningWorkerArguments) -> None:
    """Send --nbytes to the receiver --transfers times; a transfer lasts from connecting to the acknowledgement."""
    payload = memoryview(bytes(args.nbytes))
    seconds = []
    for _ in range(args.transfers):
        started = time.perf_counter()
        with socket.create_connection((args.connect_host, args.port), timeout=600) as connection:
            connection.sendall(payload)
            if connection.recv(1) != b"k":
                raise ConnectionError("the receiver did not acknowledge the transfer")
        seconds.append(time.perf_counter() - started)
    write_atomically(Path(args.output), json.dumps(dict(nbytes=args.nbytes, seconds=seconds)))


ROLES: dict[str, Callable[[JoiningWorkerArguments], None]] = dict(
    donor=run_donor, joiner=run_joiner, tcp_receiver=run_tcp_receiver, tcp_sender=run_tcp_sender)


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    (args,) = parse_arguments((JoiningWorkerArguments,), argv, description=__doc__)
    ROLES[args.role](args)


if __name__ == "__main__":
    run_main(main)
