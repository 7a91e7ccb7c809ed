#!/usr/bin/env python3
"""Collaborative SwAV trainer (self-supervised ResNet-50, multi-crop, no labels). Run one on every GPU or CPU
machine that joins.

Example (the coordinator prints the --initial_peers line):
    python swav/run_trainer.py --config swav/configs/swav-resnet50.json --initial_peers /ip4/203.0.113.5/tcp/31337/p2p/Qm... \\
        --dataset_path /data/imagenet/train --per_device_train_batch_size 64 --dataloader_num_workers 8
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.peer import require_initial_peers
from collab.training import TrainingTask, run_collaborative_training, set_seed
from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from swav.data import load_image_dataset, make_collator
from swav.model import (
    SwavCriterion,
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
    swav, peer, collab, averager, tracker, training = parse_arguments(
        ARGUMENT_GROUPS, argv, description=__doc__, preset_shared_with=COORDINATOR_GROUPS
    )
    require_initial_peers(peer, "trainer")
    collate = make_collator(swav)  # checks the crop settings before anything is loaded
    set_seed(training.seed)  # same seed on every peer: identical initial weights before state is downloaded
    dataset = load_image_dataset(swav.dataset_path)
    config = model_config(swav.model_preset, swav.hidden_dim, swav.feature_dim, swav.num_prototypes)
    model = build_model(config)
    criterion = SwavCriterion(swav)

    def follow_global_step(step: int) -> None:  # the queue switches on at a global step, the same on every peer
        criterion.global_step = step

    task = TrainingTask(
        model=model,
        dataset=dataset,
        collate_fn=collate,
        optimizer_factory=make_optimizer_factory(training, swav),
        scheduler_factory=make_scheduler_factory(training, swav),
        swarm_config=swarm_config(config, swav, collab.target_batch_size, training),
        compute_loss=criterion,
        params=parameter_groups(model, training.weight_decay, swav.freeze_prototypes_steps),
        averaged_buffers=averaged_buffers,
        on_local_step=follow_global_step,
    )
    run_collaborative_training(task, peer, collab, averager, tracker, training)


if __name__ == "__main__":
    run_main(main)
