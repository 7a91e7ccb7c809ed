#!/usr/bin/env python3
"""The plain local training loop of benchmarks/training_overhead.py: ALBERT built, fed and optimised exactly as
albert/run_trainer.py does, without hivemind, a DHT or any other peer.

It parses the trainer's own argument groups (so `--config albert/configs/demo.json` gives the same model preset,
per-pass batch, LAMB settings and schedule), builds the model, LAMB and the schedule with the same functions
(albert/model.py), draws batches with the trainer's `infinite_batches`, and accumulates gradients over
`--target_batch_size` samples before each LAMB step: the same arithmetic as a trainer alone in a swarm, where
hivemind steps the optimizer once per target batch. It writes the trainer's journal events ("computed" about once
a second, "step" after every optimizer step) to <output_dir>/journal.jsonl, so that the benchmark measures both
variants with the same code. Stops after --max_steps optimizer steps.

Started by benchmarks/training_overhead.py; not meant to be run by hand.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from albert.arguments import ARGUMENT_GROUPS
from albert.data import check_sequence_length, load_pretraining_dataset, make_collator
from albert.model import build_model, make_optimizer_factory, make_scheduler_factory, model_config, parameter_groups
from collab.arguments import parse_arguments
from collab.cli import check_stop, run_main, setup_logging
from collab.errors import UserError
from collab.journal import JOURNAL_FILE, Journal
from collab.training import infinite_batches, model_loss, resolve_device, set_seed

logger = logging.getLogger(__name__)


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    albert, _peer, collab, _averager, _tracker, training = parse_arguments(ARGUMENT_GROUPS, argv, description=__doc__)
    if collab.target_batch_size % training.per_device_train_batch_size:
        raise UserError("--target_batch_size must be a multiple of --per_device_train_batch_size here (the trainer "
                        "would overshoot the target by part of a batch; the plain loop would not)")
    set_seed(training.seed)
    device = resolve_device(training.device)
    dataset, tokenizer = load_pretraining_dataset(albert.dataset_path)
    config = model_config(albert.model_preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    check_sequence_length(dataset, config.max_position_embeddings)
    model = build_model(config).to(device)
    optimizer = make_optimizer_factory(training)(parameter_groups(model, training.weight_decay))
    scheduler = make_scheduler_factory(training)(optimizer)
    collate = make_collator(tokenizer, albert.mlm_probability)
    batches = infinite_batches(dataset, training.per_device_train_batch_size, collate, seed=training.seed,
                               num_workers=training.dataloader_num_workers)
    passes_per_step = collab.target_batch_size // training.per_device_train_batch_size
    journal = Journal(Path(training.output_dir) / JOURNAL_FILE)
    journal.write("start", torch_threads=torch.get_num_threads())
    logger.info(f"Plain loop: {training.per_device_train_batch_size} samples per pass x {passes_per_step} passes per "
                f"LAMB step, {training.max_steps} steps, {torch.get_num_threads()} torch threads")

    samples_computed, computed_logged_at = 0, 0.0
    model.train()
    for step in range(1, training.max_steps + 1):
        loss_sum = 0.0
        for _ in range(passes_per_step):
            check_stop()
            batch = {key: value.to(device) for key, value in next(batches).items()}
            loss = model_loss(model, batch)
            (loss / passes_per_step).backward()  # the mean gradient over the target batch, as hivemind averages it
            loss_sum += loss.item()
            samples_computed += training.per_device_train_batch_size
            now = time.monotonic()
            if now - computed_logged_at >= 1.0:  # the trainer's rate of "computed" events
                journal.write("computed", samples=samples_computed, step=step - 1)
                computed_logged_at = now
        optimizer.step()  # LAMB clips the gradient to --max_grad_norm inside step(), as in the trainer
        scheduler.step()
        optimizer.zero_grad(set_to_none=False)
        journal.write("step", step=step, samples_computed=samples_computed, loss=loss_sum / passes_per_step)
        if step % max(1, training.logging_steps // passes_per_step) == 0 or step == training.max_steps:
            logger.info(f"Step {step}: loss {loss_sum / passes_per_step:.4f}")
    logger.info("Done")


if __name__ == "__main__":
    run_main(main)
