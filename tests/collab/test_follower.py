"""The coordinator's follower (collab.follower) and its checkpoints (collab.monitor.Checkpointer), in process."""
from __future__ import annotations

import hivemind
import pytest
import torch

from albert.model import make_optimizer_factory, make_scheduler_factory
from collab.arguments import (AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments,
                              TrainingArguments)
from collab.follower import StateFollower
from collab.monitor import Checkpointer
from collab.optimizer import COORDINATOR_PRIORITY_OFFSET

from test_optimizer import LOOPBACK, TinyModel


def follower(dht, model, args) -> StateFollower:
    return StateFollower(
        dht=dht, peer=PeerArguments(host_maddrs=LOOPBACK), collab=CollaborationArguments(
            target_batch_size=64, matchmaking_time=1.0), averager=AveragerArguments(request_timeout=0.5),
        tracker=ProgressTrackerArguments(), model=model, params=model.parameters(),
        optimizer_factory=make_optimizer_factory(args), scheduler_factory=make_scheduler_factory(args))


@pytest.fixture
def dht():
    node = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    yield node
    node.shutdown()


def test_a_restarted_coordinator_serves_exactly_the_checkpoint_it_resumed(dht, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.1, warmup_steps=2, total_steps=10)
    first = follower(dht, TinyModel(), args)
    try:
        for _ in range(3):  # three global steps, as if averaged gradients had arrived
            for param in first.opt.state_averager.optimizer.param_groups[0]["params"]:
                param.grad = torch.ones_like(param)
            first.opt.state_averager.step(increment_epoch=True, optimizer_step=True)
        saved = Checkpointer(first, tmp_path / "checkpoints", keep=2, arguments={}).save()
        metadata, tensors, _ = first.opt.state_averager.get_current_state()
    finally:
        first.shutdown()
    assert saved is not None and saved.name == "step-3"

    restarted = follower(dht, TinyModel(), args)  # fresh weights, as after a restart
    try:
        assert Checkpointer(restarted, tmp_path / "checkpoints", keep=2, arguments={}).resume() == saved
        served_metadata, served, _ = restarted.opt.state_averager.get_current_state()
        assert served_metadata["epoch"] == metadata["epoch"] == 3
        assert len(served) == len(tensors) and all(torch.equal(a, b) for a, b in zip(served, tensors))
        assert restarted.opt.state_averager.state_sharing_priority == 3 + COORDINATOR_PRIORITY_OFFSET
    finally:
        restarted.shutdown()


def test_a_follower_never_runs_in_client_mode():
    with pytest.raises(ValueError, match="client mode"):
        class ClientDHT:
            client_mode = True
        StateFollower(dht=ClientDHT(), peer=None, collab=None, averager=None, tracker=None, model=TinyModel(),
                      params=None, optimizer_factory=None, scheduler_factory=None)
