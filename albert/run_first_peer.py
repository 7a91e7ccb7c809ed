#!/usr/bin/env python3
"""Coordinator of an ALBERT run: the always-on first peer that others join, and the run's monitor.

It keeps a stable identity and port (so the --initial_peers line it prints stays valid across restarts),
aggregates the trainers' metrics into wandb and an SQLite store, and periodically downloads the swarm's state
and saves it as a checkpoint (optionally uploading it to the Hugging Face Hub). It computes no gradients, but it
holds the swarm's live state (collab.follower): it takes part in every averaging round with weight zero, applies
the same update, and serves that state to joining peers, which is what a swarm of client-mode volunteers needs.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from albert.data import load_tokenizer
from albert.model import (
    build_model,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
    swarm_config,
)
from collab.arguments import parse_arguments, to_dict
from collab.cli import run_main, setup_logging
from collab.monitor import COORDINATOR_DEFAULTS, run_coordinator
from collab.training import set_seed


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    albert, peer, collab, averager, tracker, training, monitor_args = parse_arguments(
        ARGUMENT_GROUPS + COORDINATOR_GROUPS, argv, description=__doc__, defaults=COORDINATOR_DEFAULTS
    )
    tokenizer = load_tokenizer(albert.dataset_path)
    config = model_config(albert.model_preset, len(tokenizer), tokenizer.pad_token_id)
    set_seed(training.seed)  # the trainers' initial weights: the follower takes part from step 0
    model = build_model(config)
    run_coordinator(
        model=model, params=parameter_groups(model, training.weight_decay),
        optimizer_factory=make_optimizer_factory(training), scheduler_factory=make_scheduler_factory(training),
        averaged_buffers=(), swarm_settings=swarm_config(config, collab.target_batch_size, training),
        all_arguments=to_dict(albert, peer, collab, averager, tracker, training, monitor_args),
        peer=peer, collab=collab, averager=averager, tracker=tracker, monitor_args=monitor_args,
    )


if __name__ == "__main__":
    run_main(main)
