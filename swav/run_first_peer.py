#!/usr/bin/env python3
"""Coordinator of a SwAV run: the always-on first peer that others join, and the run's monitor.

It keeps a stable identity and port (so the --initial_peers line it prints stays valid across restarts), records
the trainers' metrics (SQLite store, wandb), and holds the swarm's live state (collab.follower): it joins every
averaging round with weight zero, applies the same LARS step and the same averaged BatchNorm statistics, serves
that state to joining peers and checkpoints it (model, LARS momentum, global step) for swav/evaluate.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments, to_dict
from collab.cli import run_main, setup_logging
from collab.monitor import COORDINATOR_DEFAULTS, run_coordinator
from collab.training import set_seed
from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from swav.data import make_collator
from swav.model import (
    averaged_buffers,
    build_model,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
    swarm_config,
)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    swav, peer, collab, averager, tracker, training, monitor_args = parse_arguments(
        ARGUMENT_GROUPS + COORDINATOR_GROUPS, argv, description=__doc__, defaults=COORDINATOR_DEFAULTS
    )
    make_collator(swav)  # the crop settings it declares to the swarm are checked like a trainer's
    config = model_config(swav.model_preset, swav.hidden_dim, swav.feature_dim, swav.num_prototypes)
    set_seed(training.seed)  # the trainers' initial weights: the follower takes part from step 0
    model = build_model(config)
    run_coordinator(
        model=model, params=parameter_groups(model, training.weight_decay, swav.freeze_prototypes_steps),
        optimizer_factory=make_optimizer_factory(training, swav),
        scheduler_factory=make_scheduler_factory(training, swav), averaged_buffers=averaged_buffers(model),
        swarm_settings=swarm_config(config, swav, collab.target_batch_size, training),
        all_arguments=to_dict(swav, peer, collab, averager, tracker, training, monitor_args),
        peer=peer, collab=collab, averager=averager, tracker=tracker, monitor_args=monitor_args,
    )


if __name__ == "__main__":
    run_main(main)
