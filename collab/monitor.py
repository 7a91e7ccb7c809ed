"""The coordinator's monitor: aggregates the peers' metrics records, logs them (wandb, SQLite), checkpoints the
swarm's state and optionally uploads it to the Hugging Face Hub.

The coordinator holds the swarm's live state through a follower (collab.follower: it takes part in every gradient
round with weight zero and applies the same step), serves it to joining and re-syncing peers, and saves it
atomically in the same format as a trainer's own checkpoints. A restarted coordinator picks up where it left off:
it appends to the same metrics store and wandb run, and loads its newest valid checkpoint, which it then offers
to joining peers (below any live trainer's state), so a swarm restarted from nothing resumes at that step.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import hivemind
import torch

from collab.arguments import AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments
from collab.checkpoints import latest_valid_checkpoint, load_model_weights, load_optimizer_state, save_checkpoint
from collab.metrics import GlobalMetrics, LocalMetrics, aggregate, fetch_metrics, make_validators
from collab.follower import StateFollower
from collab.optimizer import OptimizerFactory, SchedulerFactory
from collab.peer import announce_initial_peers, create_dht, declare_swarm_config
from collab.store import MetricsStore

logger = logging.getLogger(__name__)


@dataclass
class MonitorArguments:
    """What the coordinator records and where."""

    monitor_output_dir: str = field(
        default="outputs/coordinator",
        metadata=dict(help="Folder for the metrics database (metrics.sqlite), checkpoints and wandb files."),
    )
    refresh_period: float = field(default=5.0, metadata=dict(help="Seconds between reads of the peers' metrics."))
    save_checkpoint_step_interval: int = field(
        default=50, metadata=dict(help="Save the swarm's state (the coordinator's follower) every this many global "
                                       "steps (0 disables checkpoints).")
    )
    follow_state: bool = field(
        default=True,
        metadata=dict(help="Hold the swarm's live state: take part in every averaging round with weight zero, apply "
                           "the same step, serve the state to joining peers and checkpoint it (collab/follower.py). "
                           "Costs one trainer's bandwidth; without it the coordinator records metrics only, saves "
                           "no checkpoints, and a swarm of client-mode trainers has nobody to serve its state."),
    )
    keep_checkpoints: int = field(default=3, metadata=dict(help="How many newest coordinator checkpoints to keep."))
    wandb_project: Optional[str] = field(
        default=None, metadata=dict(help="Weights & Biases project; unset: the run_id.")
    )
    wandb_mode: str = field(
        default="auto",
        metadata=dict(help="auto (online with WANDB_API_KEY, else offline files), online, offline or disabled.",
                      choices=("auto", "online", "offline", "disabled")),
    )
    push_to_hub: bool = field(default=False, metadata=dict(help="Upload every checkpoint to the Hugging Face Hub."))
    hub_model_id: Optional[str] = field(default=None, metadata=dict(help="Hub repository, e.g. user/albert-dedloc."))
    hub_token: Optional[str] = field(default=None, metadata=dict(help="Hub token (default: HF_TOKEN / login)."))

    def __post_init__(self) -> None:
        from collab.errors import UserError

        if self.push_to_hub and not self.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id (e.g. your-name/albert-dedloc)")


def peer_name(public_key: bytes) -> str:
    """A short, stable, printable name for a peer's public key."""
    return hashlib.sha256(public_key).hexdigest()[:12]


class StepAggregator:
    """Collects records per global step; a step is final once a newer step exists and no new record came for it.

    Peers store only their latest record, so the monitor polls and remembers what it saw for each step.
    """

    def __init__(self, last_final_step: int = -1) -> None:
        self.pending: dict[int, dict[str, LocalMetrics]] = {}
        self.last_final_step = last_final_step  # a restarted monitor does not record finished steps again

    def add(self, records: dict[str, LocalMetrics]) -> list[tuple[GlobalMetrics, dict[str, LocalMetrics]]]:
        changed = set()
        for peer, record in records.items():
            if record.step > self.last_final_step and self.pending.get(record.step, {}).get(peer) != record:
                self.pending.setdefault(record.step, {})[peer] = record
                changed.add(record.step)
        newest = max(self.pending, default=-1)
        ready = [step for step in self.pending if step < newest and step not in changed]
        return [item for step in sorted(ready) if (item := self._finalize(step)) is not None]

    def flush(self) -> list[tuple[GlobalMetrics, dict[str, LocalMetrics]]]:
        return [item for step in sorted(self.pending) if (item := self._finalize(step)) is not None]

    def _finalize(self, step: int) -> Optional[tuple[GlobalMetrics, dict[str, LocalMetrics]]]:
        peers = self.pending.pop(step)
        self.last_final_step = max(self.last_final_step, step)
        for older in [s for s in self.pending if s < step]:
            self.pending.pop(older)
        result = aggregate(step, list(peers.values()))
        return None if result is None else (result, peers)


class WandbLogger:
    """wandb that can never stop the monitor: any failure is logged once and wandb is switched off."""

    RUN_ID_FILE = "wandb_run_id"  # a restarted coordinator goes on logging into the same wandb run

    def __init__(self, project: str, config: dict, mode: str, directory: Path):
        self.run = None
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "disabled":
            return
        try:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            id_file = directory / self.RUN_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.run = wandb.init(project=project, config=config, mode=mode, dir=str(directory), id=run_id,
                                  resume="allow")
            logger.info(f"wandb logging in {mode} mode ({directory}, run {run_id})")
        except Exception as e:
            logger.warning(f"wandb is unavailable, continuing without it: {e!r}")

    def log(self, metrics: GlobalMetrics) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(loss=metrics.loss, alive_peers=metrics.alive_peers, samples=metrics.samples,
                              samples_per_second=metrics.samples_per_second), step=metrics.step)
        except Exception as e:
            logger.warning(f"wandb logging failed, switching it off: {e!r}")
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                logger.warning(f"wandb did not finish cleanly: {e!r}")


class Checkpointer:
    """Saves the coordinator's follower state (collab.follower) as checkpoints, and resumes from the newest valid one
    after a restart: the follower then offers it to joining peers, below any live trainer's state of the same step,
    so a swarm restarted from nothing resumes at that step."""

    def __init__(self, follower: StateFollower, root: Path, keep: int, arguments: dict):
        self.follower, self.root, self.keep, self.arguments = follower, root, keep, arguments
        self.saved_step = -1

    @property
    def step(self) -> int:
        return self.follower.step

    def resume(self) -> Optional[Path]:
        """Load the newest valid checkpoint under root (corrupted ones are reported and skipped)."""
        folder = latest_valid_checkpoint(self.root)
        if folder is None:
            return None
        load_model_weights(self.follower.model, folder)
        self.follower.load_parameters_from_model()
        self.follower.opt.load_state_dict(load_optimizer_state(folder))
        self.follower.opt.state_averager._update_scheduler()
        self.follower.opt._update_offer_priority()
        self.saved_step = self.step
        logger.info(f"Resumed from checkpoint {folder} (global step {self.step}); offering it to joining peers")
        return folder

    def save(self) -> Optional[Path]:
        if self.step <= self.saved_step:
            return None
        if not self.follower.in_sync:
            logger.warning(f"Not saving global step {self.step}: the coordinator's copy is out of sync (it re-syncs "
                           f"from a trainer first)")
            return None
        folder = save_checkpoint(self.root, self.step, self.follower.model, self.follower.opt.state_dict(),
                                 self.arguments, keep_last=self.keep)
        self.saved_step = self.step
        logger.info(f"Saved the swarm's state at global step {self.step} to {folder}")
        return folder


def push_to_hub(folder: Path, repo_id: str, token: Optional[str], step: int) -> None:
    """Upload a checkpoint folder; failures are logged, never fatal (the hub may be unreachable)."""
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"Step {step}")
        logger.info(f"Uploaded step {step} to the Hugging Face Hub: {repo_id}")
    except Exception as e:
        logger.warning(f"Upload to the Hub failed, will retry with the next checkpoint: {e!r}")


class Monitor:
    FOLLOW_PERIOD = 0.2  # seconds between the follower's polls (it joins a round as soon as the swarm is ready)

    def __init__(self, dht: hivemind.DHT, run_id: str, args: MonitorArguments, swarm_config: dict,
                 store: MetricsStore, wandb_logger: WandbLogger, follower: Optional[StateFollower] = None,
                 checkpointer: Optional[Checkpointer] = None):
        self.dht, self.run_id, self.args, self.swarm_config = dht, run_id, args, swarm_config
        self.store, self.wandb, self.follower, self.checkpointer = store, wandb_logger, follower, checkpointer
        recorded = store.global_steps()
        self.aggregator = StepAggregator(last_final_step=recorded[-1]["step"] if recorded else -1)

    def poll(self) -> list[GlobalMetrics]:
        """Read live records once; log and store every step that became final."""
        declare_swarm_config(self.dht, self.run_id, self.swarm_config, expiration=10 * self.args.refresh_period + 60)
        records = {peer_name(key): record for key, record in fetch_metrics(self.dht, self.run_id).items()}
        return self._record(self.aggregator.add(records))

    def _record(self, finished: list[tuple[GlobalMetrics, dict[str, LocalMetrics]]]) -> list[GlobalMetrics]:
        for metrics, peers in finished:
            logger.info(f"Global step {metrics.step}: loss {metrics.loss:.4f}, {metrics.alive_peers} peer(s), "
                        f"{metrics.samples} samples, {metrics.samples_per_second:.1f} samples/s")
            self.store.add_step(metrics, peers)
            self.wandb.log(metrics)
        return [metrics for metrics, _ in finished]

    def maybe_checkpoint(self) -> None:
        interval = self.args.save_checkpoint_step_interval
        if self.checkpointer is None or interval <= 0:
            return
        if self.checkpointer.step - self.checkpointer.saved_step < interval:
            return  # (not "a multiple of interval": a restarted coordinator that downloads step 19 saves it at once)
        folder = self.checkpointer.save()
        if folder is None:
            return
        self.store.add_checkpoint(self.checkpointer.step, folder)
        if self.args.push_to_hub:
            push_to_hub(folder, self.args.hub_model_id, self.args.hub_token, self.checkpointer.step)

    def follow(self) -> None:
        try:
            if self.follower.poll():
                self.maybe_checkpoint()
        except Exception as e:  # a failed round or save must not stop the coordinator
            logger.warning(f"Following the swarm's step failed, will go on: {e!r}")

    def run(self, stop: threading.Event) -> None:
        next_poll = 0.0
        while not stop.is_set():
            if self.follower is not None:
                self.follow()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.args.refresh_period
                self.poll()
            stop.wait(self.FOLLOW_PERIOD if self.follower is not None else max(0.0, next_poll - time.monotonic()))
        self._record(self.aggregator.flush())


# A fixed port and identity keep the --initial_peers line valid across restarts. The key file is created on the
# first run (collab.peer.ensure_identity) and never committed (.gitignore: *.id): every run has its own peer ID.
COORDINATOR_DEFAULTS = dict(host_maddrs=["/ip4/0.0.0.0/tcp/31337"], identity_path="coordinator.id")


def run_coordinator(
    *,
    model: torch.nn.Module,
    params: list,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: Optional[SchedulerFactory],
    averaged_buffers: Sequence[torch.Tensor],
    swarm_settings: dict,
    all_arguments: dict,
    peer: PeerArguments,
    collab: CollaborationArguments,
    averager: AveragerArguments,
    tracker: ProgressTrackerArguments,
    monitor_args: MonitorArguments,
) -> None:
    """The coordinator of every track (run_first_peer.py): join or start the DHT, follow the swarm's state on
    `model` and checkpoint it, record the metrics, announce the --initial_peers line, run until SIGINT/SIGTERM."""
    output_dir = Path(monitor_args.monitor_output_dir)
    validators, _ = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    store = wandb_logger = follower = checkpointer = None
    try:
        store = MetricsStore(output_dir / "metrics.sqlite")
        wandb_logger = WandbLogger(monitor_args.wandb_project or peer.run_id, all_arguments, monitor_args.wandb_mode,
                                   output_dir)
        if monitor_args.follow_state:
            follower = StateFollower(
                dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker, model=model, params=params,
                optimizer_factory=optimizer_factory, scheduler_factory=scheduler_factory,
                averaged_buffers=averaged_buffers,
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
        Monitor(dht, peer.run_id, monitor_args, swarm_settings, store, wandb_logger, follower, checkpointer).run(stop)
        logger.info("Coordinator stopped")
    finally:
        if follower is not None:
            follower.shutdown()
        if wandb_logger is not None:
            wandb_logger.finish()
        if store is not None:
            store.close()
        dht.shutdown()
