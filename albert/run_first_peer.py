#!/usr/bin/env python3
"""Coordinator of an ALBERT run: the always-on first peer that others join, and the run's monitor.

It keeps a stable identity and port (so the --initial_peers line it prints stays valid across restarts),
aggregates the trainers' metrics into wandb and an SQLite store, and periodically downloads the swarm's state
and saves it as a checkpoint (optionally uploading it to the Hugging Face Hub). It trains nothing.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert.arguments import ARGUMENT_GROUPS
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
from collab.monitor import Monitor, MonitorArguments, SwarmCheckpointer, WandbLogger
from collab.peer import announce_initial_peers, create_dht
from collab.store import MetricsStore

logger = logging.getLogger(__name__)

COORDINATOR_DEFAULTS = dict(host_maddrs=["/ip4/0.0.0.0/tcp/31337"], identity_path="coordinator.id")


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    albert, peer, collab, averager, tracker, training, monitor_args = parse_arguments(
        ARGUMENT_GROUPS + (MonitorArguments,), argv, description=__doc__, defaults=COORDINATOR_DEFAULTS
    )
    output_dir = Path(monitor_args.monitor_output_dir)
    tokenizer = load_tokenizer(albert.dataset_path)
    config = model_config(albert.model_preset, len(tokenizer), tokenizer.pad_token_id)
    model = build_model(config)
    shared_settings = swarm_config(config, collab.target_batch_size, training)
    all_arguments = to_dict(albert, peer, collab, averager, tracker, training, monitor_args)

    validators, _ = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    store = wandb_logger = checkpointer = None
    try:
        store = MetricsStore(output_dir / "metrics.sqlite")
        wandb_logger = WandbLogger(monitor_args.wandb_project or peer.run_id, all_arguments, monitor_args.wandb_mode,
                                   output_dir)
        if monitor_args.save_checkpoint_step_interval > 0:
            checkpointer = SwarmCheckpointer(
                dht, peer.run_id, model, parameter_groups(model, training.weight_decay), make_optimizer_factory(training), make_scheduler_factory(training),
                collab.compression, output_dir / "checkpoints", monitor_args.keep_checkpoints, all_arguments,
                collab.load_state_timeout,
            )
            checkpointer.resume()
        # announced last: once the line is printed (and the file written), this peer is ready for others
        announce_initial_peers(dht, save_to=output_dir / "initial_peers.txt")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        logger.info(f"Monitoring run {peer.run_id!r}: metrics in {output_dir / 'metrics.sqlite'}")
        Monitor(dht, peer.run_id, monitor_args, shared_settings, store, wandb_logger, checkpointer).run(stop)
        logger.info("Coordinator stopped")
    finally:
        if checkpointer is not None:
            checkpointer.shutdown()
        if wandb_logger is not None:
            wandb_logger.finish()
        if store is not None:
            store.close()
        dht.shutdown()


if __name__ == "__main__":
    run_main(main)
