"""A minimal collaborative peer for the equivalence test: a small regression MLP trained with the project's own
trainer loop, optimizer construction and LAMB factory. It logs which samples it contributed to which global step,
and whether it ever discarded its accumulated gradients (an out-of-sync state download), then saves its weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from albert.model import make_optimizer_factory, make_scheduler_factory, parameter_groups  # noqa: E402
from collab.arguments import (  # noqa: E402
    AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments, TrainingArguments,
)
from collab.cli import setup_logging  # noqa: E402
from collab.optimizer import create_optimizer  # noqa: E402
from collab.peer import announce_initial_peers, create_dht  # noqa: E402
from collab.training import CollaborativeTrainer  # noqa: E402

NUM_SAMPLES, FEATURES = 2048, 8


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, FEATURES, generator=generator)
    y = torch.sin(x @ torch.randn(FEATURES, 1, generator=generator)) + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=generator)
    return x, y


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def mse_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def slow_mse_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    # A real model takes a while per batch; peers must not outrun the swarm's progress reports (a few per second).
    time.sleep(0.04)
    return mse_loss(model, batch)


def training_arguments(batch_size: int, max_steps: int) -> TrainingArguments:
    return TrainingArguments(per_device_train_batch_size=batch_size, learning_rate=0.05, warmup_steps=2,
                             total_steps=20, max_steps=max_steps, weight_decay=0.01, max_grad_norm=1.0,
                             logging_steps=10**9, save_steps=0, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--initial_peers", nargs="*", default=[])
    parser.add_argument("--log", required=True)
    parser.add_argument("--data_seed", type=int, required=True)
    parser.add_argument("--target_batch_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--start_after", default=None, help="wait for this file (a lone peer would finish at once)")
    options = parser.parse_args()
    setup_logging()

    log_path = Path(options.log)
    peer = PeerArguments(run_id="equivalence", initial_peers=options.initial_peers,
                         host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    collab = CollaborationArguments(target_batch_size=options.target_batch_size, matchmaking_time=1.5,
                                    averaging_timeout=30, compression="none", load_state_timeout=30)
    averager, tracker = AveragerArguments(request_timeout=1.0), ProgressTrackerArguments(
        min_refresh_period=0.2, max_refresh_period=1.0, default_refresh_period=0.5)
    args = training_arguments(options.batch_size, options.max_steps)

    model, (x, y) = make_model(), make_data()
    dht = create_dht(peer)
    announce_initial_peers(dht, save_to=log_path.with_suffix(".maddrs"))
    opt = create_optimizer(dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker,
                           params=parameter_groups(model, args.weight_decay),
                           optimizer_factory=make_optimizer_factory(args), scheduler_factory=make_scheduler_factory(args),
                           batch_size_per_step=args.per_device_train_batch_size)
    opt.load_state_from_peers()
    log_path.with_suffix(".ready").touch()
    while options.start_after and not Path(options.start_after).exists():
        time.sleep(0.1)
    events = open(log_path, "w")

    original_load = opt.load_state_from_peers

    def load_and_record(**kwargs):  # an out-of-sync download discards this epoch's local gradients
        events.write(json.dumps(dict(event="load_state", epoch=opt.local_epoch)) + "\n")
        original_load(**kwargs)

    opt.load_state_from_peers = load_and_record

    def batches():
        generator = torch.Generator().manual_seed(options.data_seed)
        while True:
            for ids in torch.randperm(NUM_SAMPLES, generator=generator).split(options.batch_size):
                if len(ids) == options.batch_size:
                    events.write(json.dumps(dict(event="batch", epoch=opt.local_epoch, ids=ids.tolist())) + "\n")
                    yield dict(x=x[ids], y=y[ids])

    try:
        trainer = CollaborativeTrainer(model, opt, batches(), args, torch.device("cpu"), compute_loss=slow_mse_loss)
        agree = trainer.finish

        def save_then_agree() -> None:  # this peer's own parameters, before the agreement copies one peer's
            torch.save(model.state_dict(), log_path.with_suffix(".before_agreement.pt"))
            agree()

        trainer.finish = save_then_agree
        trainer.train()
        torch.save(model.state_dict(), log_path.with_suffix(".pt"))
    finally:
        events.close()
        opt.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    main()
