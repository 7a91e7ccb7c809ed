#!/usr/bin/env python3
"""The plain local training loop of benchmarks/training_overhead.py: a track's model built, fed and optimised exactly
as its trainer (albert/run_trainer.py, swav/run_trainer.py) does, without hivemind, a DHT or any other peer.

`--track albert` (the default) or `--track swav` comes first; every other flag is the trainer's own: the worker
parses the track's argument groups (so `--config albert/configs/demo.json` or `--config swav/configs/cpu.json` gives
the same model preset, per-pass batch, optimizer settings and schedule), builds the model, the optimizer (LAMB,
LARS) and the schedule with the same functions as the track's run_trainer.py (albert/model.py; swav/model.py and
swav/data.py, with SwavCriterion as the loss), draws batches with the trainer's `infinite_batches`, and accumulates
gradients over `--target_batch_size` samples before each optimizer step: the same arithmetic as a trainer alone in
a swarm, where hivemind steps the optimizer once per target batch. With `--fp16` on CUDA it runs the passes under
autocast with a GradScaler, as the trainer does with hivemind's. It writes the trainer's journal events ("computed"
about once a second, "step" after every optimizer step) to <output_dir>/journal.jsonl, so that the benchmark
measures both variants with the same code. Stops after --max_steps optimizer steps.

Started by benchmarks/training_overhead.py; not meant to be run by hand.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from collab.arguments import parse_arguments
from collab.cli import check_stop, run_main, setup_logging
from collab.errors import UserError
from collab.journal import JOURNAL_FILE, Journal
from collab.training import infinite_batches, model_loss, resolve_device, set_seed, to_device

logger = logging.getLogger(__name__)

TRACKS = ("albert", "swav")


@dataclass
class PlainSetup:
    """What a track's trainer builds, for the plain loop."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Iterator[dict]
    compute_loss: Callable[[torch.nn.Module, dict], torch.Tensor]
    device: torch.device
    per_device_train_batch_size: int
    target_batch_size: int
    max_steps: int
    logging_steps: int
    fp16: bool
    optimizer_name: str
    output_dir: str
    # called before every pass with the global step it contributes to (the trainer's on_local_step)
    before_pass: Optional[Callable[[int], None]] = None


def albert_setup(argv: list[str]) -> PlainSetup:
    """ALBERT, LAMB and its schedule as albert/run_trainer.py builds them."""
    from albert.arguments import ARGUMENT_GROUPS
    from albert.data import check_sequence_length, load_pretraining_dataset, make_collator
    from albert.model import (
        build_model,
        make_optimizer_factory,
        make_scheduler_factory,
        model_config,
        parameter_groups,
    )

    albert, _peer, collab, _averager, _tracker, training = parse_arguments(ARGUMENT_GROUPS, argv, description=__doc__)
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
    return PlainSetup(model, optimizer, scheduler, batches, model_loss, device, training.per_device_train_batch_size,
                      collab.target_batch_size, training.max_steps, training.logging_steps, training.fp16, "LAMB",
                      training.output_dir)


def swav_setup(argv: list[str]) -> PlainSetup:
    """SwAV's ResNet, LARS and its schedule, the multi-crop collator and SwavCriterion as swav/run_trainer.py builds
    them (the same calls in the same order, so the same seed gives the same initial weights)."""
    from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
    from swav.data import load_image_dataset, make_collator
    from swav.model import (
        SwavCriterion,
        build_model,
        make_optimizer_factory,
        make_scheduler_factory,
        model_config,
        parameter_groups,
    )

    swav, _peer, collab, _averager, _tracker, training = parse_arguments(
        ARGUMENT_GROUPS, argv, description=__doc__, preset_shared_with=COORDINATOR_GROUPS)
    collate = make_collator(swav)
    set_seed(training.seed)
    dataset = load_image_dataset(swav.dataset_path)
    config = model_config(swav.model_preset, swav.hidden_dim, swav.feature_dim, swav.num_prototypes)
    model = build_model(config)
    criterion = SwavCriterion(swav)
    params = parameter_groups(model, training.weight_decay, swav.freeze_prototypes_steps)
    device = resolve_device(training.device)
    model.to(device)
    optimizer = make_optimizer_factory(training, swav)(params)
    scheduler = make_scheduler_factory(training, swav)(optimizer)
    batches = infinite_batches(dataset, training.per_device_train_batch_size, collate, seed=training.seed,
                               num_workers=training.dataloader_num_workers)

    def follow_global_step(step: int) -> None:  # the queue switches on at a global step, as in the trainer
        criterion.global_step = step

    return PlainSetup(model, optimizer, scheduler, batches, criterion, device, training.per_device_train_batch_size,
                      collab.target_batch_size, training.max_steps, training.logging_steps, training.fp16, "LARS",
                      training.output_dir, before_pass=follow_global_step)


SETUPS = dict(albert=albert_setup, swav=swav_setup)


def split_track(argv: list[str]) -> tuple[str, list[str]]:
    """(--track's value, the other flags): --track NAME or --track=NAME, anywhere; albert when absent."""
    track, rest, index = "albert", [], 0
    while index < len(argv):
        if argv[index] == "--track" and index + 1 < len(argv):
            track, index = argv[index + 1], index + 2
            continue
        if argv[index].startswith("--track="):
            track = argv[index].split("=", 1)[1]
        else:
            rest.append(argv[index])
        index += 1
    if track not in SETUPS:
        raise UserError(f"--track {track!r} is unknown; choose one of {', '.join(TRACKS)}")
    return track, rest


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    track, rest = split_track(list(sys.argv[1:] if argv is None else argv))
    setup = SETUPS[track](rest)
    per_pass = setup.per_device_train_batch_size
    if setup.target_batch_size % per_pass:
        raise UserError("--target_batch_size must be a multiple of --per_device_train_batch_size here (the trainer "
                        "would overshoot the target by part of a batch; the plain loop would not)")
    model, optimizer, scheduler, device = setup.model, setup.optimizer, setup.scheduler, setup.device
    use_amp = setup.fp16 and device.type == "cuda"  # as the trainer: --fp16 means AMP on CUDA, fp32 elsewhere
    grad_scaler = torch.amp.GradScaler("cuda") if use_amp else None
    passes_per_step = setup.target_batch_size // per_pass
    journal = Journal(Path(setup.output_dir) / JOURNAL_FILE)
    journal.write("start", torch_threads=torch.get_num_threads())
    logger.info(f"Plain loop ({track}): {per_pass} samples per pass x {passes_per_step} passes per "
                f"{setup.optimizer_name} step, {setup.max_steps} steps, {torch.get_num_threads()} torch threads")

    samples_computed, computed_logged_at = 0, 0.0
    model.train()
    for step in range(1, setup.max_steps + 1):
        loss_sum = 0.0
        for _ in range(passes_per_step):
            check_stop()
            if setup.before_pass is not None:
                setup.before_pass(step - 1)  # the global steps done so far, as hivemind's local_epoch
            batch = {key: to_device(value, device) for key, value in next(setup.batches).items()}
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                loss = setup.compute_loss(model, batch)
            scaled = loss / passes_per_step  # the mean gradient over the target batch, as hivemind averages it
            (grad_scaler.scale(scaled) if grad_scaler is not None else scaled).backward()
            loss_sum += loss.item()
            samples_computed += per_pass
            now = time.monotonic()
            if now - computed_logged_at >= 1.0:  # the trainer's rate of "computed" events
                journal.write("computed", samples=samples_computed, step=step - 1)
                computed_logged_at = now
        if grad_scaler is not None:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()  # LAMB clips the gradient to --max_grad_norm inside step(), as in the trainer
        scheduler.step()
        optimizer.zero_grad(set_to_none=False)
        journal.write("step", step=step, samples_computed=samples_computed, loss=loss_sum / passes_per_step)
        if step % max(1, setup.logging_steps // passes_per_step) == 0 or step == setup.max_steps:
            logger.info(f"Step {step}: loss {loss_sum / passes_per_step:.4f}")
    logger.info("Done")


if __name__ == "__main__":
    run_main(main)
