#!/usr/bin/env python3
"""Coordinator of an ALBERT run: the always-on first peer that others join, and the run's monitor.

It keeps a stable identity and port (so the --initial_peers line it prints stays valid across restarts),
aggregates the trainers' metrics into wandb and an SQLite store, and periodically downloads the swarm's state
and saves it as a checkpoint (optionally uploading it to the Hugging Face Hub). It computes no gradients, but it
holds the swarm's live state (collab.follower): it takes part in every averaging round with weight zero, applies
the same update, and serves that state to joining peers, which is what a swarm of client-mode volunteers needs.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
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
from collab.metrics import make_validators
from collab.follower import StateFollower
from collab.monitor import Checkpointer, Monitor, WandbLogger
from collab.peer import announce_initial_peers, create_dht
from collab.store import MetricsStore

logger = logging.getLogger(__name__)

# A fixed port and identity keep the --initial_peers line valid across restarts. The key file is created on the
# first run (collab.peer.ensure_identity) and never committed (.gitignore: *.id): every run has its own peer ID.
COORDINATOR_DEFAULTS = dict(host_maddrs=["/ip4/0.0.0.0/tcp/31337"], identity_path="coordinator.id")


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    albert, peer, collab, averager, tracker, training, monitor_args = parse_arguments(
        ARGUMENT_GROUPS + COORDINATOR_GROUPS, argv, description=__doc__, defaults=COORDINATOR_DEFAULTS
    )
    output_dir = Path(monitor_args.monitor_output_dir)
    tokenizer = load_tokenizer(albert.dataset_path)
    config = model_config(albert.model_preset, len(tokenizer), tokenizer.pad_token_id)
    model = build_model(config)
    shared_settings = swarm_config(config, collab.target_batch_size, training)
    all_arguments = to_dict(albert, peer, collab, averager, tracker, training, monitor_args)

    validators, _ = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    store = wandb_logger = follower = checkpointer = None
    try:
        store = MetricsStore(output_dir / "metrics.sqlite")
        wandb_logger = WandbLogger(monitor_args.wandb_project or peer.run_id, all_arguments, monitor_args.wandb_mode,
                                   output_dir)
        if monitor_args.follow_state:
            follower = StateFollower(
                dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker, model=model,
                params=parameter_groups(model, training.weight_decay),
                optimizer_factory=make_optimizer_factory(training), scheduler_factory=make_scheduler_factory(training),
            )
            checkpointer = Checkpointer(follower, output_dir / "checkpoints", monitor_args.keep_checkpoints,
                                        all_arguments)
            if checkpointer.resume() is None:
                follower.opt.load_state_from_peers()  # a restarted coordinator of a live swarm takes its state
        else:
            logger.warning("--follow_state false: this coordinator records metrics only (no state, no checkpoints)")
        # announced last: once the line is printed (and the file written), this peer is ready for others
        announce_initial_peers(dht, save_to=output_dir / "initial_peers.txt")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        logger.info(f"Monitoring run {peer.run_id!r}: metrics in {output_dir / 'metrics.sqlite'}"
                    + (f"; following the swarm's state from global step {follower.step}" if follower else ""))
        Monitor(dht, peer.run_id, monitor_args, shared_settings, store, wandb_logger, follower, checkpointer).run(stop)
        logger.info("Coordinator stopped")
    finally:
        if follower is not None:
            follower.shutdown()
        if wandb_logger is not None:
            wandb_logger.finish()
        if store is not None:
            store.close()
        dht.shutdown()


if __name__ == "__main__":
    run_main(main)
