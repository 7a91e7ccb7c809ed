"""Building hivemind.Optimizer from the argument groups.

Two hivemind 1.1.12 traps are handled here (see README, "Known traps"): `averager_opts` reaches only the state
averager, so the averaging settings and the bandwidth hint are given to the gradient averager through
`grad_averager_factory`; and the Optimizer's own `client_mode` argument is ignored, so client mode is set on
the DHT and passed to the Optimizer as the same explicit bool.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Callable, Iterable, Optional

import hivemind
import torch
from hivemind.averaging.control import StepControl
from hivemind.compression import (
    CompressionBase,
    Float16Compression,
    NoCompression,
    Quantile8BitQuantization,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.optim.grad_averager import GradientAverager

from collab.arguments import AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

SIZE_ADAPTIVE_THRESHOLD = 2**16 + 1  # fp16 below, 8-bit at or above (sahajBERT's choice)


def make_compression(name: str) -> CompressionBase:
    """Map a --compression choice to hivemind's compression object."""
    choices: dict[str, Callable[[], CompressionBase]] = {
        "none": NoCompression,
        "fp16": Float16Compression,
        "scaled-fp16": ScaledFloat16Compression,
        "uniform8bit": Uniform8BitQuantization,
        "quantile8bit": Quantile8BitQuantization,
        "size-adaptive": lambda: SizeAdaptiveCompression(
            threshold=SIZE_ADAPTIVE_THRESHOLD, less=Float16Compression(), greater_equal=Uniform8BitQuantization()
        ),
    }
    if name not in choices:
        raise ValueError(f"unknown compression {name!r}; choose one of {sorted(choices)}")
    return choices[name]()


class RecordingGradientAverager(GradientAverager):
    """A GradientAverager that remembers its latest round, so the trainer can report who it averaged with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latest_round: Optional[StepControl] = None

    def step(self, *args, **kwargs):
        result = super().step(*args, **kwargs)
        if isinstance(result, StepControl):
            self.latest_round = result
        return result

    def pop_latest_group_size(self) -> int:
        """Peers in the latest finished gradient round; 1 if this peer proceeded with its local gradients."""
        control, self.latest_round = self.latest_round, None
        if control is None or not control.done() or control.cancelled() or control.exception() is not None:
            return 1
        return len(control.result())


def averager_kwargs(collab: CollaborationArguments, averager: AveragerArguments) -> dict:
    """Settings that must reach *both* averagers (gradients and state)."""
    return dict(dataclasses.asdict(averager), bandwidth=collab.bandwidth)


def create_optimizer(
    *,
    dht: hivemind.DHT,
    peer: PeerArguments,
    collab: CollaborationArguments,
    averager: AveragerArguments,
    tracker: ProgressTrackerArguments,
    params: Iterable,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: Optional[SchedulerFactory],
    batch_size_per_step: Optional[int],
    auxiliary: bool = False,
) -> hivemind.Optimizer:
    """A hivemind.Optimizer that accumulates until the swarm reaches the target batch, then averages and steps."""
    compression = make_compression(collab.compression)
    shared_averager_kwargs = averager_kwargs(collab, averager)
    return hivemind.Optimizer(
        dht=dht,
        run_id=peer.run_id,
        target_batch_size=collab.target_batch_size - collab.batch_size_lead,
        batch_size_per_step=None if auxiliary else batch_size_per_step,
        params=params,
        optimizer=optimizer_factory,
        scheduler=scheduler_factory,
        matchmaking_time=collab.matchmaking_time,
        averaging_timeout=collab.averaging_timeout,
        load_state_timeout=collab.load_state_timeout,
        # Gradients accumulate in .grad (no second copy). With AMP this requires hivemind.GradScaler.
        reuse_grad_buffers=not auxiliary,
        offload_optimizer=collab.offload_optimizer,
        delay_optimizer_step=collab.delay_optimizer_step,
        delay_grad_averaging=collab.delay_grad_averaging,
        average_state_every=collab.average_state_every,
        average_opt_statistics=tuple(collab.average_opt_statistics),
        client_mode=dht.client_mode,
        auxiliary=auxiliary,
        grad_compression=compression,
        state_averaging_compression=compression,
        grad_averager_factory=partial(RecordingGradientAverager, **shared_averager_kwargs),
        averager_opts=shared_averager_kwargs,
        tracker_opts=dataclasses.asdict(tracker),
        verbose=collab.verbose_optimizer,
    )
