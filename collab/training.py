"""The collaborative training loop, shared by every track.

A track supplies a `TrainingTask` (model, dataset, collate function, optimizer and scheduler factories, the
settings every peer must share); `run_collaborative_training` does the rest in a fixed order: join the DHT,
check the swarm's settings, resume (explicit checkpoint, newest local checkpoint, state from peers, scratch),
train until the global step reaches --max_steps, and shut everything down.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import hivemind
import numpy as np
import torch
from tqdm.auto import tqdm

from collab.arguments import (
    AveragerArguments,
    CollaborationArguments,
    PeerArguments,
    ProgressTrackerArguments,
    TrainingArguments,
    to_dict,
)
from collab.cli import RateLimitedLog, check_stop
from collab.checkpoints import (
    latest_valid_checkpoint,
    load_model_weights,
    load_optimizer_state,
    save_checkpoint,
    verify_checkpoint,
)
from collab.errors import UserError
from collab.final_state import FinalStateAgreement
from collab.journal import JOURNAL_FILE, Journal, ParameterProbe, optimizer_digest
from collab.metrics import LocalMetrics, make_validators, publish_metrics
from collab.optimizer import OptimizerFactory, RoundReport, SchedulerFactory, SwarmOptimizer, create_optimizer
from collab.peer import (
    InitialPeerReconnector,
    check_swarm_config,
    create_dht,
    declare_swarm_config,
    require_initial_peers,
)

logger = logging.getLogger(__name__)

LossFunction = Callable[[torch.nn.Module, dict], torch.Tensor]
NONFINITE_BEFORE_RESYNC = 10  # consecutive non-finite losses that mean the parameters themselves are broken


def model_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Default loss: Hugging Face models return it when the batch carries labels."""
    return model(**batch).loss


@dataclass
class TrainingTask:
    """Everything a track contributes: the rest of the collaboration is the same for every track."""

    model: torch.nn.Module
    dataset: torch.utils.data.Dataset
    collate_fn: Optional[Callable]
    optimizer_factory: OptimizerFactory
    scheduler_factory: Optional[SchedulerFactory]
    swarm_config: dict  # settings every peer of the run must share (model shape, batch, optimizer)
    compute_loss: LossFunction = model_loss
    params: Optional[list] = None  # parameter groups for the optimizer (default: all model parameters)
    # buffers averaged with the gradients at every global step (BatchNorm statistics), read from the model once it
    # is on its device (moving a model replaces its buffer tensors); every peer of a run must average the same ones
    averaged_buffers: Optional[Callable[[torch.nn.Module], list[torch.Tensor]]] = None
    # called before every local step with the global step it contributes to (e.g. a loss that changes at a step)
    on_local_step: Optional[Callable[[int], None]] = None


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def to_device(value, device: torch.device):
    """A batch entry on the training device: a tensor, or a list of tensors (e.g. the crops of multi-crop SwAV)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def peer_seed(seed: int, public_key: bytes) -> int:
    """A data-order seed unique to this peer, so that peers do not all see the same samples in the same order."""
    return int.from_bytes(hashlib.sha256(seed.to_bytes(8, "little", signed=True) + public_key).digest()[:8], "little")


def infinite_batches(
    dataset: torch.utils.data.Dataset, batch_size: int, collate_fn: Optional[Callable], seed: int, num_workers: int = 0
) -> Iterator[dict]:
    """Reshuffle and go over the dataset again and again (a collaboration has no notion of local epochs)."""
    if len(dataset) < batch_size:
        raise UserError(f"the dataset has {len(dataset)} samples, fewer than one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate_fn,
        generator=generator, num_workers=num_workers,
    )
    while True:
        yield from loader


class MetricsReporter:
    """Publishes this peer's signed metrics record (and the swarm settings) once per global step."""

    def __init__(self, dht: hivemind.DHT, run_id: str, public_key: bytes, swarm_config: dict, expiration: float):
        self.dht, self.run_id, self.public_key = dht, run_id, public_key
        self.swarm_config, self.expiration = swarm_config, expiration

    def report(self, metrics: LocalMetrics) -> None:
        publish_metrics(self.dht, self.run_id, self.public_key, metrics, self.expiration)
        declare_swarm_config(self.dht, self.run_id, self.swarm_config, self.expiration)


class CollaborativeTrainer:
    """Local forward/backward passes; hivemind.Optimizer decides when the swarm takes a global step."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: SwarmOptimizer,
        batches: Iterator[dict],
        args: TrainingArguments,
        device: torch.device,
        reporter: Optional[MetricsReporter] = None,
        compute_loss: LossFunction = model_loss,
        save_arguments: Optional[dict] = None,
        journal: Optional[Journal] = None,
        reconnector: Optional[InitialPeerReconnector] = None,
        on_local_step: Optional[Callable[[int], None]] = None,
    ):
        self.model, self.opt, self.batches, self.args, self.device = model, optimizer, batches, args, device
        self.reporter, self.compute_loss, self.save_arguments = reporter, compute_loss, save_arguments or {}
        self.journal = journal or Journal(None)
        self.reconnector, self.on_local_step = reconnector, on_local_step
        self.probe = ParameterProbe(_unwrap(model))
        self.use_amp = args.fp16 and device.type == "cuda"
        self.grad_scaler = hivemind.GradScaler() if self.use_amp else None
        self.local_steps = self.attempted_steps = 0
        self.nonfinite_total = self.nonfinite_in_a_row = 0
        self._warn_nonfinite_loss = RateLimitedLog(logger)
        self.samples_computed, self._computed_logged_at = 0, 0.0
        self.reported_epoch = optimizer.local_epoch
        self._journaled_round = None
        self._journaled_downloads = optimizer.state_downloads
        self._reset_contribution()

    def _reset_contribution(self) -> None:
        self.loss_sum, self.mini_steps, self.samples = 0.0, 0, 0

    def local_step(self) -> Optional[float]:
        """One optimizer.step() worth of samples (with local gradient accumulation); returns the mean loss."""
        self.model.train()
        self.attempted_steps += 1
        if self.on_local_step is not None:
            self.on_local_step(self.opt.local_epoch)
        accumulation = self.args.gradient_accumulation_steps
        losses = []
        for _ in range(accumulation):
            batch = {key: to_device(value, self.device) for key, value in next(self.batches).items()}
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
            with autocast:
                loss = self.compute_loss(self.model, batch)
            if not torch.isfinite(loss):  # never let a bad batch poison the accumulated gradients
                self._on_nonfinite_loss(loss.item())
                continue
            self.nonfinite_in_a_row = 0
            scaled = loss / accumulation
            (self.grad_scaler.scale(scaled) if self.grad_scaler else scaled).backward()
            losses.append(loss.item())
        if not losses:
            return None
        batch_size = self.args.per_device_train_batch_size * len(losses)
        self.samples_computed += batch_size
        discarded_before = self.opt.discarded_accumulations
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.opt, batch_size=batch_size)  # calls opt.step(..., grad_scaler=...)
            self.grad_scaler.update()
        else:
            self.opt.step(batch_size=batch_size)
        self.local_steps += 1
        if self.opt.discarded_accumulations != discarded_before:
            self._reset_contribution()  # hivemind threw the accumulated gradients away (re-sync, bad gradients)
            return sum(losses) / len(losses)
        self.loss_sum += sum(losses) / len(losses)
        self.mini_steps += 1
        self.samples += batch_size
        return sum(losses) / len(losses)

    def _journal_progress(self) -> None:
        """Samples computed (at most once a second), the start of each gradient round, each state download, and
        the value check's verdicts and re-syncs."""
        while self.opt.sync_events:
            event = self.opt.sync_events.pop(0)
            self.journal.write(**event)
            if event["event"] == "resynced":
                self.journal_state("resynced")
                self._journaled_downloads = self.opt.state_downloads
        if self.opt.state_downloads != self._journaled_downloads:
            self._journaled_downloads = self.opt.state_downloads
            self.journal_state("downloaded")
        now = time.monotonic()
        if now - self._computed_logged_at >= 1.0:
            self.journal.write("computed", samples=self.samples_computed, step=self.opt.local_epoch)
            self._computed_logged_at = now
        scheduled = self.opt.scheduled_grads
        if scheduled is not None and scheduled is not self._journaled_round:
            self.journal.write("round_scheduled", step=self.opt.local_epoch)
            self._journaled_round = scheduled

    def _on_nonfinite_loss(self, value: float) -> None:
        """Skip the batch; if it keeps happening, the local parameters are broken: re-sync from the swarm."""
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        self._warn_nonfinite_loss(f"Non-finite loss ({value}) on a local batch: skipped it")
        if self.nonfinite_in_a_row >= NONFINITE_BEFORE_RESYNC:
            logger.warning(f"{self.nonfinite_in_a_row} non-finite losses in a row: downloading the swarm's state")
            self.nonfinite_in_a_row = 0
            self.opt.load_state_from_peers()

    def journal_state(self, reason: str, seconds: Optional[float] = None, **fields) -> None:
        """Record the state this peer now holds (after a download, a resume or a re-sync)."""
        self.journal.write("state", reason=reason, step=self.opt.local_epoch, seconds=seconds,
                           optimizer=optimizer_digest(self.opt.state_dict()), **fields, **self.probe.read())

    def train(self) -> None:
        args = self.args
        logger.info(
            f"Batch: {args.per_device_train_batch_size} per pass x {args.gradient_accumulation_steps} accumulation "
            f"= {args.local_batch_size} samples per local step; the swarm steps every "
            f"{self.opt.target_batch_size} samples; training until global step {args.max_steps}"
        )
        with tqdm(total=args.max_steps, initial=self.opt.local_epoch, unit="step", desc="global step",
                  disable=None, file=sys.stderr) as progress:
            while self.swarm_step() < args.max_steps:
                check_stop()
                loss = self.local_step()
                self._journal_progress()
                if self.reconnector is not None:
                    self.reconnector.maybe_reconnect()
                if loss is not None and self.local_steps % args.logging_steps == 0:
                    logger.info(f"Local step {self.local_steps}: loss {loss:.4f}, global step {self.opt.local_epoch}, "
                                f"{self.opt.tracker.global_progress.samples_accumulated}/{self.opt.target_batch_size} "
                                f"samples of the next step")
                if self.opt.local_epoch != self.reported_epoch:
                    progress.update(self.opt.local_epoch - progress.n)
                    self.on_global_step()
        self.finish()

    def swarm_step(self) -> int:
        """The newest global step anyone in the swarm has reached (this peer may lag one step behind)."""
        return max(self.opt.local_epoch, self.opt.tracker.global_epoch)

    def finish(self) -> None:
        """Agree with the other trainers on one final state (see collab.final_state), then save it."""
        FinalStateAgreement(self.opt, self.args.max_steps, self.args.final_sync_timeout).run(
            save=self.save if self.args.save_steps > 0 else None)
        self.journal_state("final")

    def on_global_step(self) -> None:
        """Report what this peer contributed to the step just taken, and checkpoint when it is time."""
        step = self.opt.local_epoch
        report = self.opt.last_round
        if report is None or report.step != step:
            report = RoundReport(step, "alone")  # it reached this step by a download, not by a round of its own
        if self.mini_steps == 0:  # it reached this step by downloading the state: nothing of its own to report
            logger.info(f"Global step {step}: reached by downloading the swarm's state")
            self.reported_epoch = step
            return
        counts = self.opt.outcome_counts
        metrics = LocalMetrics(
            step=step,
            samples_per_second=float(self.opt.tracker.performance_ema.samples_per_second),
            samples_accumulated=self.samples,
            loss_sum=float(self.loss_sum),
            mini_steps=self.mini_steps,
            outcome=report.outcome,
            trainers_averaged=report.trainers,
            aux_in_group=report.aux,
            rounds_failed=counts["failed"] + counts["expired"] + counts["partial"],
            rounds_partial=counts["partial"],
            resyncs=self.opt.resyncs,
        )
        mean_loss = self.loss_sum / max(self.mini_steps, 1)
        logger.info(f"Global step {step}: local loss {mean_loss:.4f} over {self.samples} samples, "
                    f"{describe_round(report)}, lr {self.opt.param_groups[0]['lr']:.3g}, "
                    f"{metrics.samples_per_second:.1f} samples/s")
        if self.reporter is not None:
            self.reporter.report(metrics)
        probe = self.probe.read()
        self.journal.write("step", **metrics.dict(), samples_computed=self.samples_computed,
                           nonfinite_losses=self.nonfinite_total,
                           nonfinite_gradients=self.opt.nonfinite_gradient_steps, in_sync=self.opt.in_sync, **probe)
        if not probe["finite"]:  # never serve or average broken parameters: take a healthy peer's state
            logger.error(f"This peer's parameters hold inf/NaN after global step {step}: downloading the swarm's state")
            self.opt.load_state_from_peers()
        self._reset_contribution()
        self.reported_epoch = step
        if self.args.save_steps > 0 and step % self.args.save_steps == 0 and step < self.args.max_steps:
            self.save()

    def save(self) -> Path:
        folder = save_checkpoint(
            Path(self.args.output_dir) / "checkpoints", self.opt.local_epoch, _unwrap(self.model),
            self.opt.state_dict(), self.save_arguments, keep_last=self.args.save_total_limit,
        )
        self.journal.write("checkpoint", step=self.opt.local_epoch, folder=str(folder))
        logger.info(f"Saved checkpoint {folder}")
        return folder


def describe_round(report: RoundReport) -> str:
    """The round in words for the log: whom it averaged with, or what happened instead."""
    if report.outcome == "averaged":
        aux = f" and {report.aux} aux peer(s)" if report.aux else ""
        return f"averaged with {report.trainers - 1} other trainer(s){aux}"
    return dict(failed="its gradient round failed", expired="its pre-scheduled round expired before the step",
                alone="no other trainer seen: stepped alone")[report.outcome]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def find_resume_checkpoint(args: TrainingArguments) -> Optional[Path]:
    """Resume order, step 1-2: an explicit --resume_from_checkpoint, else the newest valid local checkpoint."""
    if args.resume_from_checkpoint:
        folder = Path(args.resume_from_checkpoint)
        if not folder.is_dir():
            raise UserError(f"--resume_from_checkpoint {folder}: no such folder")
        try:
            verify_checkpoint(folder)
        except Exception as e:
            raise UserError(f"--resume_from_checkpoint: {e}") from None
        return folder
    return latest_valid_checkpoint(Path(args.output_dir) / "checkpoints")


def run_collaborative_training(
    task: TrainingTask,
    peer: PeerArguments,
    collab: CollaborationArguments,
    averager: AveragerArguments,
    tracker: ProgressTrackerArguments,
    args: TrainingArguments,
) -> None:
    """Join the swarm, resume, train to --max_steps, shut down. The same for every track."""
    all_arguments = to_dict(peer, collab, averager, tracker, args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "arguments.json").write_text(json.dumps(all_arguments, indent=2, sort_keys=True))
    device = resolve_device(args.device)
    if args.fp16 and device.type != "cuda":
        logger.warning("--fp16 needs CUDA: training in fp32 on the CPU")
    journal = Journal(output_dir / JOURNAL_FILE)
    journal.write("start", resume_from_checkpoint=args.resume_from_checkpoint)

    validators, public_key = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    optimizer = None
    try:
        check_swarm_config(dht, peer.run_id, task.swarm_config)
        resume_from = find_resume_checkpoint(args)
        if resume_from is not None:
            logger.info(f"Resuming from local checkpoint {resume_from}")
            load_model_weights(task.model, resume_from)
        task.model.to(device)
        optimizer = create_optimizer(
            dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker,
            params=task.params or task.model.parameters(), optimizer_factory=task.optimizer_factory,
            scheduler_factory=task.scheduler_factory, batch_size_per_step=args.local_batch_size,
            averaged_buffers=task.averaged_buffers(task.model) if task.averaged_buffers else (),
        )
        if resume_from is not None:
            optimizer.load_state_dict(load_optimizer_state(resume_from))
            optimizer.state_averager._update_scheduler()  # hivemind keeps the schedule in step with the epoch
        logger.info(f"Looking for peers to download the latest training state from (local step "
                    f"{optimizer.local_epoch})")
        started = time.monotonic()
        downloaded = optimizer.load_state_from_peers()
        logger.info(f"Starting at global step {optimizer.local_epoch}")

        reporter = MetricsReporter(dht, peer.run_id, public_key, task.swarm_config, args.statistics_expiration)
        batches = infinite_batches(task.dataset, args.per_device_train_batch_size, task.collate_fn,
                                   seed=peer_seed(args.seed, public_key), num_workers=args.dataloader_num_workers)
        trainer = CollaborativeTrainer(task.model, optimizer, batches, args, device, reporter, task.compute_loss,
                                       save_arguments=all_arguments, journal=journal,
                                       reconnector=InitialPeerReconnector(dht, peer.initial_peers),
                                       on_local_step=task.on_local_step)
        trainer.journal_state("joined", seconds=time.monotonic() - started, downloaded=downloaded)
        trainer.train()
        logger.info(f"Reached global step {optimizer.local_epoch}: done")
    finally:
        if optimizer is not None:
            optimizer.shutdown()
        dht.shutdown()


def check_auxiliary_peer_flags(peer: PeerArguments) -> None:
    """What an auxiliary peer needs, checked before any model or data is loaded."""
    require_initial_peers(peer, "auxiliary peer")
    if peer.client_mode:
        raise UserError("an auxiliary peer must accept incoming connections: drop --client_mode")


def run_auxiliary_peer(
    *,
    params: list,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: Optional[SchedulerFactory],
    averaged_buffers: Sequence[torch.Tensor],
    peer: PeerArguments,
    collab: CollaborationArguments,
    averager: AveragerArguments,
    tracker: ProgressTrackerArguments,
    args: TrainingArguments,
) -> None:
    """An auxiliary peer (run_aux.py of every track): takes part in averaging rounds, computes no gradients, until
    the global step reaches --max_steps. It holds the track's model only for the shapes of what is averaged."""
    check_auxiliary_peer_flags(peer)
    validators, _ = make_validators(peer.run_id)
    dht = create_dht(peer, record_validators=validators)
    optimizer = None
    try:
        optimizer = create_optimizer(
            dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker, params=params,
            optimizer_factory=optimizer_factory, scheduler_factory=scheduler_factory, batch_size_per_step=None,
            auxiliary=True, averaged_buffers=averaged_buffers,
        )
        logger.info(f"Auxiliary peer ready: helping averaging rounds until global step {args.max_steps}")
        last_epoch = optimizer.local_epoch
        reconnector = InitialPeerReconnector(dht, peer.initial_peers)
        while max(optimizer.local_epoch, optimizer.tracker.global_epoch) < args.max_steps:
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
