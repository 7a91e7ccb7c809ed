"""hivemind.Optimizer as collab.optimizer builds it: settings reach both averagers, every compression really
averages (values checked, not log lines), and a local checkpoint restores weights, step and schedule."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import hivemind
import pytest
import torch
from hivemind.utils import get_dht_time

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
from collab.optimizer import RoleGradientAverager, create_optimizer, make_compression, skip_nonfinite_updates
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


def test_nonfinite_averaged_gradient_skips_the_update():
    model = TinyModel()
    optimizer = skip_nonfinite_updates(make_optimizer_factory(TrainingArguments(learning_rate=0.1))(model.parameters()))
    make_scheduler_factory(TrainingArguments(warmup_steps=0))(optimizer)  # schedulers re-wrap step(): must still work
    before = [param.detach().clone() for param in model.parameters()]
    for param in model.parameters():
        param.grad = torch.full_like(param, float("nan"))
    optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(model.parameters(), before))
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert not all(torch.equal(param, old) for param, old in zip(model.parameters(), before))


def test_nonfinite_local_gradients_are_dropped_not_accumulated(dht):
    model = TinyModel()
    opt = build(dht, model, TrainingArguments())
    try:
        model.linear.weight.grad = torch.full_like(model.linear.weight, float("nan"))
        model.linear.bias.grad = torch.ones_like(model.linear.bias)
        opt.step(batch_size=4)
        assert opt.nonfinite_gradient_steps == 1 and opt.discarded_accumulations == 1
        assert opt.grad_averager.local_samples_accumulated == 0
        assert all(torch.count_nonzero(param.grad) == 0 for param in model.parameters())
        model.linear.weight.grad = torch.ones_like(model.linear.weight)
        opt.step(batch_size=4)
        assert opt.grad_averager.local_samples_accumulated == 4 and opt.discarded_accumulations == 1
    finally:
        opt.shutdown()


def test_state_download_passes_over_a_vanished_donor_and_gives_up_in_bounded_time(caplog):
    """A killed peer's state offer lingers in the DHT: the joiner must move on to a live donor, and with no live
    donor left it must stop after --load_state_attempts with a few readable lines."""
    joiner_dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    donor_dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=joiner_dht.get_visible_maddrs())
    vanished_dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=joiner_dht.get_visible_maddrs())
    vanished_id = vanished_dht.peer_id.to_bytes()
    vanished_dht.shutdown()
    args = TrainingArguments(learning_rate=0.1, warmup_steps=1)
    donor_model, joiner_model = TinyModel(), TinyModel()
    donor = build(donor_dht, donor_model, args)
    joiner = build(joiner_dht, joiner_model, args, load_state_attempts=3)
    joiner.load_state_backoff = 0.2
    try:
        for _ in range(3):
            for param in donor_model.parameters():
                param.grad = torch.ones_like(param)
            donor.state_averager.step(increment_epoch=True, optimizer_step=True)
        donor.state_averager.state_sharing_priority = donor.local_epoch
        offers_key = f"{joiner.state_averager.prefix}.all_averagers"
        joiner_dht.store(offers_key, subkey=vanished_id, value=100.0,  # the highest priority: tried first
                         expiration_time=get_dht_time() + 120)
        time.sleep(2)  # the donor's offer reaches the DHT
        started = time.monotonic()
        assert joiner.load_state_from_peers() is True
        assert time.monotonic() - started < 30
        assert joiner.local_epoch == 3
        for mine, theirs in zip(joiner_model.parameters(), donor_model.parameters()):
            assert torch.equal(mine, theirs)

        donor.shutdown()
        donor_dht.shutdown()
        joiner_dht.store(offers_key, subkey=donor_dht.peer_id.to_bytes(), value=3.0,
                         expiration_time=get_dht_time() + 120)  # as if it had been killed
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="collab.optimizer"):
            started = time.monotonic()
            assert joiner.load_state_from_peers() is False
            elapsed = time.monotonic() - started
        messages = [record.getMessage() for record in caplog.records if record.name == "collab.optimizer"]
        assert sum("attempt" in message and "failed" in message for message in messages) == 2, messages
        assert sum("Could not download the training state in 3 attempts" in message for message in messages) == 1
        assert elapsed < 60, elapsed
        assert joiner.local_epoch == 3  # kept its state
    finally:
        joiner.shutdown()
        if donor_dht.is_alive():
            donor.shutdown()
            donor_dht.shutdown()
        joiner_dht.shutdown()


def test_a_peer_with_broken_parameters_is_never_a_donor():
    """A donor whose parameters hold NaN refuses to share them; the joiner takes a healthy donor's state."""
    joiner_dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    others = [hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=joiner_dht.get_visible_maddrs())
              for _ in range(2)]
    args = TrainingArguments(learning_rate=0.1, warmup_steps=1)
    broken_model, healthy_model, joiner_model = TinyModel(), TinyModel(), TinyModel()
    broken, healthy = build(others[0], broken_model, args), build(others[1], healthy_model, args)
    joiner = build(joiner_dht, joiner_model, args)
    try:
        for opt, model in ((broken, broken_model), (healthy, healthy_model)):
            for _ in range(2):
                for param in model.parameters():
                    param.grad = torch.ones_like(param)
                opt.state_averager.step(increment_epoch=True, optimizer_step=True)
        with torch.no_grad():  # offloaded copies are what the averager serves
            next(p for group in broken.state_averager.optimizer.param_groups for p in group["params"]).fill_(float("nan"))
        broken.state_averager.state_sharing_priority = 10.0  # the most attractive donor
        healthy.state_averager.state_sharing_priority = 2.0
        time.sleep(2)
        assert joiner.load_state_from_peers() is True
        assert joiner.local_epoch == 2
        for mine, theirs in zip(joiner_model.parameters(), healthy_model.parameters()):
            assert torch.equal(mine, theirs)
    finally:
        for opt in (joiner, broken, healthy):
            opt.shutdown()
        for node in (*others, joiner_dht):
            node.shutdown()


def test_a_lone_peer_schedules_no_rounds_and_steps_with_its_own_gradients(dht):
    """Alone, hivemind would pre-schedule a gradient round before every global step and cancel it at the step, its
    matchmaking polling the DHT all the while (benchmarks/training_overhead.py). SwarmOptimizer schedules rounds only
    when the tracker sees another peer, and a lone peer still takes its global steps with its local gradients."""
    import dataclasses

    model, args = TinyModel(), TrainingArguments(learning_rate=0.1, warmup_steps=0)
    opt = create_optimizer(  # a tracker that refreshes often, so that it estimates the next step as a trainer's does
        dht=dht, peer=PeerArguments(host_maddrs=LOOPBACK),
        collab=CollaborationArguments(target_batch_size=64, matchmaking_time=1.0),
        averager=AveragerArguments(request_timeout=0.5),
        tracker=ProgressTrackerArguments(min_refresh_period=0.1, default_refresh_period=0.2, max_refresh_period=0.5),
        params=model.parameters(), optimizer_factory=make_optimizer_factory(args),
        scheduler_factory=make_scheduler_factory(args), batch_size_per_step=4,
    )
    try:
        before = [param.detach().clone() for param in model.parameters()]
        deadline = time.monotonic() + 60
        while opt.local_epoch < 3 and time.monotonic() < deadline:
            for param in model.parameters():
                param.grad.add_(1.0)  # what backward() does with reuse_grad_buffers
            opt.step(batch_size=4)
            # hivemind 1.1.12 alone: a round is pre-scheduled about 1 s (matchmaking_time) before each step
            assert opt.scheduled_grads is None and opt.scheduled_state is None
            time.sleep(0.05)  # 16 local steps per global step: ~1 s each, as long as the matchmaking time
        assert opt.local_epoch >= 3
        assert (opt.last_round.outcome, opt.last_round.trainers) == ("alone", 1)
        assert opt.outcome_counts["alone"] == opt.local_epoch and opt.in_sync
        assert not any(torch.equal(param, old) for param, old in zip(model.parameters(), before))

        # once the tracker sees another peer, the round is pre-scheduled as hivemind does it
        with opt.tracker.pause_updates():  # keeps the tracker's fetcher from replacing global_progress meanwhile
            opt.tracker.global_progress = dataclasses.replace(opt.tracker.global_progress, num_peers=2,
                                                              eta_next_epoch=get_dht_time())
            opt._maybe_schedule_gradient_averaging()
            assert opt.scheduled_grads is not None
            opt.scheduled_grads.cancel()
            opt.scheduled_grads = None
    finally:
        opt.shutdown()


def local_gradients(seed: int) -> torch.Tensor:
    """A gradient like a real model's: most values of order 1e-3, a tenth below fp16's smallest step (6e-8), as
    the gradient of attention's key bias, which softmax cancels."""
    generator = torch.Generator().manual_seed(seed)
    gradient = torch.randn(20_000, generator=generator) * 1e-3
    gradient[::10] = torch.randn(2_000, generator=generator) * 2e-8
    return gradient


def average_gradients_in_fp16(averager_class) -> list[torch.Tensor]:
    """Two peers of one real all-reduce round at fp16 average their own gradients; each returns what it applies."""
    first = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    second = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=first.get_visible_maddrs())
    parameters = [torch.nn.Parameter(torch.zeros(20_000)) for _ in range(2)]
    averagers = []
    for seed, (node, parameter) in enumerate(zip((first, second), parameters)):
        parameter.grad = local_gradients(seed)
        averagers.append(averager_class(
            [parameter], dht=node, prefix=f"fp16_grid_{averager_class.__name__}", start=True,
            compression=make_compression("fp16"), target_group_size=2, min_matchmaking_time=2.0,
            request_timeout=1.0))
        averagers[-1].accumulate_grads_(batch_size=8)
    try:
        controls = [averager.step(wait=False, timeout=30) for averager in averagers]
        assert all(control.result(60) is not None for control in controls), "the round failed"
        applied = []
        for averager in averagers:
            if isinstance(averager, RoleGradientAverager):
                averager.round_to_wire_grid_()  # what SwarmOptimizer does before the optimizer reads the gradient
            with averager.get_tensors() as (averaged,):
                applied.append(averaged.clone())
        return applied
    finally:
        for averager in averagers:
            averager.shutdown()
        second.shutdown()
        first.shutdown()


def fp16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half().float()


def test_peers_of_an_fp16_round_apply_the_same_gradient_up_to_one_fp16_unit():
    """hivemind hands each sender its own fp32 values plus the fp16 difference to the average its reducer
    computed, so the peers of a plain GradientAverager's round apply different gradients: each keeps whatever its
    own values lost on the wire, all of any value below fp16's smallest step. RoleGradientAverager puts the values
    on fp16's grid before and after the round (collab.optimizer.RoleGradientAverager): the peers' gradients then
    agree in most coordinates and differ only by the rounding of the delta in the others (benchmarks/fp16_drift.py
    measures what each does to LAMB's parameters over many steps)."""
    local = [local_gradients(0), local_gradients(1)]
    plain = average_gradients_in_fp16(hivemind.optim.grad_averager.GradientAverager)
    # the tensor is one part (under hivemind's part size): one peer reduces it, the other sends and adds the delta
    matches = []
    for reducer, sender in ((0, 1), (1, 0)):
        average = (local[reducer] + fp16(local[sender])) / 2
        matches.append(torch.allclose(plain[reducer], average, rtol=0, atol=1e-9)
                       and torch.allclose(plain[sender], local[sender] + fp16(average - fp16(local[sender])),
                                          rtol=0, atol=1e-9))
    assert any(matches), "hivemind's all-reduce no longer hands out own values plus an fp16 delta"
    tiny = slice(0, None, 10)
    assert (plain[0][tiny] != plain[1][tiny]).all()  # below 6e-8 each peer kept its own value
    assert (plain[0] != plain[1]).float().mean() > 0.9

    on_grid = average_gradients_in_fp16(RoleGradientAverager)
    for applied in on_grid:
        assert torch.equal(applied, fp16(applied))  # what the optimizer reads is on fp16's grid on every peer
    # where they differ, by the fp16 rounding of the delta: one fp16 unit of the larger of the value and the delta
    expected = (local[0] + local[1]) / 2
    delta = torch.maximum((expected - local[0]).abs(), (expected - local[1]).abs())
    one_unit = torch.finfo(torch.float16).eps * torch.maximum(on_grid[0].abs(), delta).clamp(min=2.0**-14)
    assert ((on_grid[0] - on_grid[1]).abs() <= one_unit).all()
    assert (on_grid[0] != on_grid[1]).float().mean() < 0.4
    assert ((on_grid[0] - expected).abs() <= 2 * one_unit).all()  # and it is still the average, to fp16's rounding
