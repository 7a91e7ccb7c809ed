#!/usr/bin/env python3
"""Auxiliary ALBERT peer: a CPU-only helper that takes part in averaging rounds and contributes no gradients.

It reduces a share of every all-reduce, which takes load off trainers with slow uplinks. It must accept
incoming connections (no --client_mode). Pass it the same --config / model flags as the trainers.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
from albert.data import load_tokenizer
from albert.model import build_model, make_optimizer_factory, make_scheduler_factory, model_config, parameter_groups
from collab.arguments import parse_arguments
from collab.cli import check_stop, run_main, setup_logging
from collab.errors import UserError
from collab.metrics import make_validators
from collab.optimizer import create_optimizer
from collab.peer import InitialPeerReconnector, create_dht, require_initial_peers

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    albert, peer, collab, averager, tracker, training = parse_arguments(
        ARGUMENT_GROUPS, argv, description=__doc__, preset_shared_with=COORDINATOR_GROUPS
    )
    require_initial_peers(peer, "auxiliary peer")
    if peer.client_mode:
        raise UserError("an auxiliary peer must accept incoming connections: drop --client_mode")
    tokenizer = load_tokenizer(albert.dataset_path)
    model = build_model(model_config(albert.model_preset, len(tokenizer), tokenizer.pad_token_id))
    validators, _ = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    optimizer = None
    try:
        optimizer = create_optimizer(
            dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker,
            params=parameter_groups(model, training.weight_decay), optimizer_factory=make_optimizer_factory(training),
            scheduler_factory=make_scheduler_factory(training), batch_size_per_step=None, auxiliary=True,
        )
        logger.info(f"Auxiliary peer ready: helping averaging rounds until global step {training.max_steps}")
        last_epoch = optimizer.local_epoch
        reconnector = InitialPeerReconnector(dht, peer.initial_peers)
        while max(optimizer.local_epoch, optimizer.tracker.global_epoch) < training.max_steps:
            check_stop()
            reconnector.maybe_reconnect()
            optimizer.step()  # joins the round when the swarm is ready; otherwise returns at once
            if optimizer.local_epoch != last_epoch:
                last_epoch = optimizer.local_epoch
                logger.info(f"Helped with global step {last_epoch}")
            time.sleep(tracker.min_refresh_period)
    finally:
        if optimizer is not None:
            optimizer.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    run_main(main)
