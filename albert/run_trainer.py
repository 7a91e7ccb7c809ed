#!/usr/bin/env python3
"""Collaborative ALBERT trainer (MLM + sentence-order prediction). Run one on every GPU or CPU machine that joins.

Example (the coordinator prints the --initial_peers line):
    python albert/run_trainer.py --initial_peers /ip4/203.0.113.5/tcp/31337/p2p/Qm... \\
        --dataset_path data/albert_tokenized_wikitext --per_device_train_batch_size 4 --gradient_accumulation_steps 2
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from albert.data import check_sequence_length, load_pretraining_dataset, make_collator
from albert.model import (
    build_model,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
    swarm_config,
)
from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.peer import require_initial_peers
from collab.training import TrainingTask, run_collaborative_training, set_seed


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    albert, peer, collab, averager, tracker, training = parse_arguments(
        ARGUMENT_GROUPS, argv, description=__doc__, preset_shared_with=COORDINATOR_GROUPS
    )
    require_initial_peers(peer, "trainer")
    set_seed(training.seed)  # same seed on every peer: identical initial weights before state is downloaded
    dataset, tokenizer = load_pretraining_dataset(albert.dataset_path)
    config = model_config(albert.model_preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    check_sequence_length(dataset, config.max_position_embeddings)
    model = build_model(config)
    task = TrainingTask(
        model=model,
        dataset=dataset,
        collate_fn=make_collator(tokenizer, albert.mlm_probability),
        optimizer_factory=make_optimizer_factory(training),
        scheduler_factory=make_scheduler_factory(training),
        swarm_config=swarm_config(config, collab.target_batch_size, training),
        params=parameter_groups(model, training.weight_decay),
    )
    run_collaborative_training(task, peer, collab, averager, tracker, training)


if __name__ == "__main__":
    run_main(main)
