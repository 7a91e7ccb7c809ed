"""hivemind.Optimizer as collab.optimizer builds it: settings reach both averagers, every compression really
averages (values checked, not log lines), and a local checkpoint restores weights, step and schedule."""
from __future__ import annotations

import threading
from pathlib import Path

import hivemind
import pytest
import torch

from albert.model import make_optimizer_factory, make_scheduler_factory
from collab.arguments import (
    COMPRESSION_CHOICES,
    AveragerArguments,
    CollaborationArguments,
    PeerArguments,
    ProgressTrackerArguments,
    TrainingArguments,
)
from collab.checkpoints import load_model_weights, load_optimizer_state, save_checkpoint
from collab.optimizer import create_optimizer, make_compression
from collab.training import find_resume_checkpoint

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class TinyModel(torch.nn.Module):
    """Just enough of a Hugging Face model for save_checkpoint (save_pretrained)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(Path(folder) / "model.safetensors"))


def build(dht, model, args: TrainingArguments, **collab_overrides):
    collab = CollaborationArguments(target_batch_size=64, matchmaking_time=1.0, **collab_overrides)
    return create_optimizer(
        dht=dht, peer=PeerArguments(host_maddrs=LOOPBACK), collab=collab,
        averager=AveragerArguments(request_timeout=0.5, target_group_size=7), tracker=ProgressTrackerArguments(),
        params=model.parameters(), optimizer_factory=make_optimizer_factory(args),
        scheduler_factory=make_scheduler_factory(args), batch_size_per_step=4,
    )


@pytest.fixture
def dht():
    node = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    yield node
    node.shutdown()


def test_bandwidth_and_group_settings_reach_both_averagers(dht):
    opt = build(dht, TinyModel(), TrainingArguments(), bandwidth=42.0)
    try:
        for averager in (opt.grad_averager, opt.state_averager):
            assert averager.bandwidth == 42.0
            assert averager.matchmaking_kwargs["request_timeout"] == 0.5
            assert averager.matchmaking_kwargs["target_group_size"] == 7
        assert opt.client_mode is False and opt.target_batch_size == 64
    finally:
        opt.shutdown()


def test_resume_restores_weights_step_and_schedule(dht, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.1, warmup_steps=2, total_steps=10)
    model = TinyModel()
    opt = build(dht, model, args)
    try:
        for _ in range(3):  # three global steps with local gradients (a lone peer)
            for param in model.parameters():
                param.grad = torch.ones_like(param)
            opt.state_averager.step(increment_epoch=True, optimizer_step=True)
        lr, step = opt.param_groups[0]["lr"], opt.local_epoch
        save_checkpoint(tmp_path / "checkpoints", step, model, opt.state_dict(), {}, keep_last=2)
        saved = {key: value.clone() for key, value in model.state_dict().items()}
    finally:
        opt.shutdown()
    assert step == 3

    fresh = TinyModel()
    folder = find_resume_checkpoint(args)
    assert folder is not None and folder.name == "step-3"
    load_model_weights(fresh, folder)
    reopened = build(dht, fresh, args)
    try:
        reopened.load_state_dict(load_optimizer_state(folder))
        reopened.state_averager._update_scheduler()
        assert reopened.local_epoch == 3
        assert reopened.param_groups[0]["lr"] == pytest.approx(lr)
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, saved[key])
    finally:
        reopened.shutdown()


TOLERANCE = {"none": 1e-6, "fp16": 2e-3, "scaled-fp16": 2e-3, "uniform8bit": 0.1, "quantile8bit": 0.1,
             "size-adaptive": 0.1}


@pytest.mark.parametrize("name", COMPRESSION_CHOICES)
def test_every_compression_really_averages(name):
    """Two averagers with different tensors must both end near the mean (hivemind notes: 8-bit once averaged
    nothing while reporting success)."""
    size = 70_000  # above the size-adaptive threshold, so that its 8-bit branch is used
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(size, generator=generator), torch.randn(size, generator=generator) + 1.0]
    expected = (tensors[0] + tensors[1]) / 2
    first = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    second = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=first.get_visible_maddrs())
    averagers = [
        hivemind.averaging.DecentralizedAverager(
            [tensor.clone()], dht=node, prefix=f"compression_{name.replace('-', '_')}", start=True,
            compression=make_compression(name), target_group_size=2, min_matchmaking_time=2.0, request_timeout=1.0)
        for node, tensor in zip((first, second), tensors)
    ]
    try:
        results = [None, None]

        def average(index):
            results[index] = averagers[index].step(timeout=30)

        threads = [threading.Thread(target=average, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(result is not None for result in results), f"{name}: averaging failed"
        for averager in averagers:
            with averager.get_tensors() as (averaged,):
                error = (averaged - expected).abs().mean().item()
                assert error < TOLERANCE[name], f"{name}: mean error {error}"
    finally:
        for averager in averagers:
            averager.shutdown()
        second.shutdown()
        first.shutdown()
