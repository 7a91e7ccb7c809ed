"""The training loop's own safeguards, on a real (lone) hivemind.Optimizer."""
import logging

import hivemind
import pytest
import torch

from albert.model import make_optimizer_factory, make_scheduler_factory
from collab.arguments import (
    AveragerArguments,
    CollaborationArguments,
    PeerArguments,
    ProgressTrackerArguments,
    TrainingArguments,
)
from collab.errors import UserError
from collab.optimizer import create_optimizer
from collab.training import NONFINITE_BEFORE_RESYNC, CollaborativeTrainer, infinite_batches, peer_seed

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def test_each_peer_gets_its_own_data_order():
    assert peer_seed(42, b"peer-a") != peer_seed(42, b"peer-b")
    assert peer_seed(42, b"peer-a") == peer_seed(42, b"peer-a")


def test_dataset_smaller_than_a_batch_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one batch"):
        next(infinite_batches(list(range(3)), batch_size=4, collate_fn=None, seed=0))


def test_nonfinite_losses_are_skipped_quietly_then_trigger_a_resync(caplog):
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    model = torch.nn.Linear(2, 1)
    args = TrainingArguments(per_device_train_batch_size=2, total_steps=10, warmup_steps=1, device="cpu")
    opt = create_optimizer(
        dht=dht, peer=PeerArguments(host_maddrs=LOOPBACK), collab=CollaborationArguments(target_batch_size=64),
        averager=AveragerArguments(), tracker=ProgressTrackerArguments(), params=model.parameters(),
        optimizer_factory=make_optimizer_factory(args), scheduler_factory=make_scheduler_factory(args),
        batch_size_per_step=2,
    )
    batches = iter(lambda: dict(x=torch.ones(2, 2)), None)
    trainer = CollaborativeTrainer(model, opt, batches, args, torch.device("cpu"),
                                   compute_loss=lambda m, batch: m(batch["x"]).sum() * float("nan"))
    try:
        with caplog.at_level(logging.WARNING, logger="collab.training"):
            results = [trainer.local_step() for _ in range(2 * NONFINITE_BEFORE_RESYNC + 5)]
        assert results == [None] * len(results)
        assert trainer.nonfinite_total == len(results) and opt.local_epoch == 0
        skipped = [r for r in caplog.records if "skipped it" in r.getMessage()]
        resyncs = [r for r in caplog.records if "downloading the swarm's state" in r.getMessage()]
        assert len(skipped) == 2  # the 1st and the 10th: a few lines, not one per batch
        assert len(resyncs) == 2
        assert all(torch.isfinite(p).all() for p in model.parameters())
    finally:
        opt.shutdown()
        dht.shutdown()
