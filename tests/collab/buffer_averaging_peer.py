"""A peer of the buffer-averaging test (its own process: hivemind's progress tracker signs with one key per
process, so two trackers in one process overwrite each other's progress). It fills a BatchNorm layer's running
statistics with --fill, contributes one local step of --batch_size samples, waits for the global step, and
writes its statistics, parameters and round outcome as JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collab.arguments import (  # noqa: E402
    AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments,
)
from collab.optimizer import create_optimizer  # noqa: E402
from collab.peer import create_dht  # noqa: E402

TARGET_BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--initial_peer", required=True)
    parser.add_argument("--fill", type=float, required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--offload", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)  # the same weights on both peers, as the kit's seed gives them
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    norm = model[1]
    norm.running_mean.fill_(args.fill)
    norm.running_var.fill_(args.fill + 1)
    peer = PeerArguments(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=[args.initial_peer],
                         run_id=f"buffers_{args.offload}")
    dht = create_dht(peer)
    optimizer = create_optimizer(
        dht=dht, peer=peer, collab=CollaborationArguments(
            target_batch_size=TARGET_BATCH, matchmaking_time=2.0, compression="none", offload_optimizer=bool(args.offload)),
        averager=AveragerArguments(request_timeout=1.0), tracker=ProgressTrackerArguments(min_refresh_period=0.1),
        params=model.parameters(), optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
        scheduler_factory=None, batch_size_per_step=args.batch_size,
        averaged_buffers=[norm.running_mean, norm.running_var],
    )
    try:
        model.eval()  # the statistics stay as filled: the test knows what their average must be
        inputs = torch.randn(args.batch_size, 4, generator=torch.Generator().manual_seed(args.batch_size))
        model(inputs).square().mean().backward()
        optimizer.step(batch_size=args.batch_size)  # neither peer reaches the target alone
        deadline = time.monotonic() + 60
        # no step() until this peer sees both contributions: its own alone would trigger hivemind's ETA rule
        while optimizer.tracker.global_progress.samples_accumulated < TARGET_BATCH and time.monotonic() < deadline:
            time.sleep(0.1)
        while optimizer.local_epoch == 0 and time.monotonic() < deadline:
            optimizer.step(batch_size=0)  # weight-zero calls, as the coordinator's follower makes them
            time.sleep(0.1)
        probed = [tensor.data_ptr() for tensor in optimizer.sync_probe.tensors]
        Path(args.output).write_text(json.dumps(dict(
            step=optimizer.local_epoch, outcome=optimizer.last_round.outcome if optimizer.last_round else None,
            running_mean=norm.running_mean.tolist(), running_var=norm.running_var.tolist(),
            parameters=[param.detach().flatten().tolist() for param in model.parameters()],
            statistics_probed=norm.running_mean.data_ptr() in probed and norm.running_var.data_ptr() in probed,
        )))
    finally:
        optimizer.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    main()
