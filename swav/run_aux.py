#!/usr/bin/env python3
"""Auxiliary SwAV peer: a CPU-only helper that takes part in averaging rounds and contributes no gradients.

It reduces a share of every all-reduce (gradients and BatchNorm statistics), which takes load off trainers with
slow uplinks. It must accept incoming connections (no --client_mode). Pass it the same --config as the trainers.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.training import check_auxiliary_peer_flags, run_auxiliary_peer
from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from swav.model import (
    averaged_buffers,
    build_model,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    swav, peer, collab, averager, tracker, training = parse_arguments(
        ARGUMENT_GROUPS, argv, description=__doc__, preset_shared_with=COORDINATOR_GROUPS
    )
    check_auxiliary_peer_flags(peer)
    model = build_model(model_config(swav.model_preset, swav.hidden_dim, swav.feature_dim, swav.num_prototypes))
    run_auxiliary_peer(
        params=parameter_groups(model, training.weight_decay, swav.freeze_prototypes_steps),
        optimizer_factory=make_optimizer_factory(training, swav),
        scheduler_factory=make_scheduler_factory(training, swav), averaged_buffers=averaged_buffers(model),
        peer=peer, collab=collab, averager=averager, tracker=tracker, args=training,
    )


if __name__ == "__main__":
    run_main(main)
