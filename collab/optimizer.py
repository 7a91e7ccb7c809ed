"""Building hivemind.Optimizer from the argument groups, hardened for a swarm whose peers come and go.

Two hivemind 1.1.12 traps are handled here (see README, "Known traps"): `averager_opts` reaches only the state
averager, so the averaging settings and the bandwidth hint are given to the gradient averager through
`grad_averager_factory`; and the Optimizer's own `client_mode` argument is ignored, so client mode is set on
the DHT and passed to the Optimizer as the same explicit bool.

`SwarmOptimizer` adds what churn and bad peers need: downloading the state retries a bounded number of times
with back-off (hivemind's loops forever), and gradients that are not finite are never accumulated or sent.
`skip_nonfinite_updates` guards the inner optimizer: an averaged gradient that is not finite (a peer that does
not run this code) skips the update instead of poisoning every peer's parameters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
import types
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Optional, Sequence

import hivemind
import torch
from hivemind.averaging.control import StepControl
from hivemind.compression import (
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    Quantile8BitQuantization,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.averaging import DecentralizedAverager
from hivemind.compression.adaptive import AdaptiveCompressionBase
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.optim.state_averager import TrainingStateAverager

from collab.journal import TensorProbe
from collab.sync import SyncCheck, SyncRecord, SyncVerdict
from collab.arguments import AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments
from collab.cli import RateLimitedLog, check_stop

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

SIZE_ADAPTIVE_THRESHOLD = 2**16 + 1  # fp16 below, 8-bit at or above (sahajBERT's choice)
SYNC_PROBE_SIZE = 128  # positions of the gradient and parameters compared between peers after each step
OUT_OF_SYNC_BEFORE_ADVICE = 3  # steps out of sync in a row before a peer is told what to change, and backs off
MAX_RESYNC_INTERVAL = 32  # global steps between re-sync attempts at most
COORDINATOR_PRIORITY_OFFSET = -0.25  # a coordinator's state comes after a live trainer's of the same step
OUT_OF_SYNC_PRIORITY_OFFSET = -0.5  # a peer out of sync comes after every peer in sync
NEVER = 2**62  # hivemind averages the state when the next step is a multiple of average_state_every


def make_compression(name: str) -> CompressionBase:
    """Map a --compression choice to hivemind's compression object."""
    choices: dict[str, Callable[[], CompressionBase]] = {
        "none": NoCompression,
        "fp16": Float16Compression,
        "scaled-fp16": ScaledFloat16Compression,
        "uniform8bit": Uniform8BitQuantization,
        "quantile8bit": Quantile8BitQuantization,
        "size-adaptive": lambda: SizeAdaptiveCompression(
            threshold=SIZE_ADAPTIVE_THRESHOLD, less=Float16Compression(), greater_equal=Uniform8BitQuantization()
        ),
    }
    if name not in choices:
        raise ValueError(f"unknown compression {name!r}; choose one of {sorted(choices)}")
    return choices[name]()


def travels_as_fp16(compression: CompressionBase, tensor: torch.Tensor) -> bool:
    """Whether hivemind sends this tensor as plain fp16, value by value (fp16, or size-adaptive's small tensors)."""
    if isinstance(compression, AdaptiveCompressionBase):
        compression = compression.choose_compression(CompressionInfo.from_tensor(tensor))
    return type(compression) is Float16Compression  # not ScaledFloat16Compression: its grid depends on each part


def on_fp16_grid(tensor: torch.Tensor) -> torch.Tensor:
    """What Float16Compression delivers for `tensor` (it clamps to fp16's range first), in the tensor's own dtype."""
    finfo = torch.finfo(torch.float16)
    return tensor.clamp(finfo.min, finfo.max).to(torch.float16).to(tensor.dtype)


@torch.no_grad()
def round_to_fp16_grid_(tensor: torch.Tensor) -> None:
    tensor.copy_(on_fp16_grid(tensor))


class RoleGradientAverager(GradientAverager):
    """A GradientAverager that tells its groupmates its role (trainer, aux or coordinator) through hivemind's
    all-gather, so that a round's group can be counted in trainers, not just peers.

    It also puts the tensors that travel as fp16 on fp16's grid, before the round and after it, so that the
    peers of a round apply the same gradient. hivemind's all-reduce hands each sender its own fp32 values plus the
    fp16 difference to the part's average: every peer keeps the residual its own values lost on the wire (all of
    any value below fp16's 6e-8), plus the rounding of that difference. LAMB divides each coordinate by its own
    second moment, so these residuals move the peers apart step after step: simulated on ALBERT-tiny (3 peers,
    100 steps, benchmarks/fp16_drift.py), the largest parameter gap grows to 1.1e-2, 10-13% of a step's largest
    move. Rounding the local values first removes the first residual; rounding the result makes most coordinates
    bit-identical on every peer, and the gap stays at 2e-3, 2-3% of a step (README, "One model": "The fp16
    bound").

    Given `buffers` (a model's BatchNorm running statistics), it also averages them in the same all-reduce as the
    gradients, weighted like them by the samples each peer computed: after every global step every peer of the
    round holds the same statistics, as the parameters. hivemind itself averages such tensors only in its state
    rounds (`extra_tensors`, every --average_state_every steps), so between those rounds each peer's statistics
    would drift with its own data. They ride behind the gradients in the averaged tensors: `gradient_tensors()` is
    the gradients' part, and every peer of one run must pass the same buffers (the averagers' schema hash keeps
    peers with other tensors out of the group).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], *, role: str = "trainer",
                 buffers: Sequence[torch.Tensor] = (), **kwargs):
        self.role, self.buffers = role, tuple(buffers)
        self.wire_compression: CompressionBase = kwargs.get("compression", NoCompression())
        self.parameters = tuple(parameters)  # hivemind's own attribute, set early for _grads_from_parameters
        if self.buffers:
            with torch.no_grad():
                kwargs["averaged_grads"] = tuple(
                    tensor.detach().cpu().clone().share_memory_()
                    for tensor in (*self._grads_from_parameters(), *self.buffers))
        super().__init__(self.parameters, **kwargs)
        with self.get_tensors() as averaged:  # which of them travel as fp16 is fixed by their sizes: decide once
            self._on_fp16_wire = [travels_as_fp16(self.wire_compression, tensor) for tensor in averaged]

    def schedule_step(self, *args, **kwargs) -> StepControl:
        kwargs.setdefault("gather", dict(role=self.role))
        return super().schedule_step(*args, **kwargs)

    @contextlib.contextmanager
    def gradient_tensors(self):
        """The averaged gradients alone (one per parameter, as hivemind's Optimizer expects), under the lock."""
        with self.get_tensors() as averaged:
            yield averaged[:len(self.parameters)]

    @torch.no_grad()
    def load_accumulators_into_averager_(self) -> None:
        super().load_accumulators_into_averager_()
        with self.get_tensors() as averaged:
            for buffer, slot in zip(self.buffers, averaged[len(self.parameters):]):
                slot.copy_(buffer)
        self.round_to_wire_grid_()

    @torch.no_grad()
    def round_to_wire_grid_(self) -> None:
        """Put every averaged tensor that travels as fp16 on fp16's grid (see the class docstring)."""
        with self.get_tensors() as averaged:
            for tensor, on_fp16_wire in zip(averaged, self._on_fp16_wire, strict=True):
                if on_fp16_wire:
                    round_to_fp16_grid_(tensor)

    @torch.no_grad()
    def load_averaged_buffers_(self) -> None:
        """Copy the round's average of the buffers into the model. After a round that did not average, hivemind has
        loaded the local values back into the averager (load_accumulators_into_averager_), so this changes nothing;
        a non-finite average (a group of weight-zero peers only) is never loaded."""
        with self.get_tensors() as averaged:
            slots = averaged[len(self.parameters):]
            if self.buffers and all_finite(slots):
                for buffer, slot in zip(self.buffers, slots):
                    buffer.copy_(slot)


@dataclass
class RoundReport:
    """What this peer's gradient round at one global step came to, in its own words (before the value check).

    outcome: averaged (the round finished), failed (it broke down after the trigger: hivemind then steps with a
    zero gradient), expired (the pre-scheduled round was over before the step: hivemind steps with the local
    gradient), alone (no other peer was seen: the local gradient, as it should be).
    """

    step: int
    outcome: str
    trainers: int = 1  # trainers in the group, this one included
    aux: int = 0  # aux peers and coordinators in the group (they average no samples of their own)


def count_roles(gathered) -> tuple[int, int]:
    """(trainers, others) in a finished round's group, from the roles its members gathered."""
    roles = [data.get("role", "trainer") if isinstance(data, dict) else "trainer"
             for data in (gathered.values() if isinstance(gathered, dict) else ())]
    trainers = sum(role == "trainer" for role in roles)
    return trainers, len(roles) - trainers


class _RememberDownloadedEpoch(DecentralizedAverager):
    """Sits right below TrainingStateAverager in the method order and sees what the download returned."""

    downloaded_epoch: Optional[int] = None

    def load_state_from_peers(self, **kwargs):
        result = super().load_state_from_peers(**kwargs)
        if result is not None and not all_finite(result[1]):
            logger.warning("The state received holds inf/NaN values: not loading it")
            return None  # TrainingStateAverager then keeps the local state
        if result is not None:
            metadata = result[0]
            self.downloaded_epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
        return result


class ReportingStateAverager(TrainingStateAverager, _RememberDownloadedEpoch):
    """A TrainingStateAverager that tells whether its last load_state_from_peers() received a state, and who
    offers one: hivemind's returns None either way."""

    def load_state_from_peers(self, **kwargs) -> Optional[int]:
        """Download the newest state; return its global step if it was received and loaded, else None.

        `downloaded_epoch` tells a state that never arrived (None) from one that was refused (hivemind keeps the
        local state when the donor's step is behind this peer's, or when the layouts differ).
        """
        self.downloaded_epoch = None
        super().load_state_from_peers(**kwargs)
        loaded = self.downloaded_epoch is not None and self.local_epoch == self.downloaded_epoch
        return self.downloaded_epoch if loaded else None

    def get_current_state(self):
        """The state sent to a peer that downloads it; never a broken one (the peer then asks the next donor)."""
        metadata, tensors, infos = super().get_current_state()
        if not all_finite(tensors):
            logger.warning("This peer's parameters or optimizer statistics hold inf/NaN: not sharing them")
            return None, [], []
        return metadata, tensors, infos

    def donors(self) -> dict[bytes, float]:
        """Other peers that offer their state, with their priorities (a killed peer's record lingers ~30 s)."""
        found = self.dht.get(f"{self.prefix}.all_averagers", latest=True)
        if found is None or not isinstance(found.value, dict):
            return {}
        own_id = self.peer_id.to_bytes()
        return {peer: float(entry.value) for peer, entry in found.value.items()
                if peer != own_id and isinstance(entry.value, (int, float))}


def all_finite(tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """True if no tensor holds inf or NaN (the max-norm of a tensor is finite exactly when all its values are)."""
    tensors = [tensor for tensor in tensors if tensor is not None and tensor.is_floating_point()]
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all())


def skip_nonfinite_updates(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make optimizer.step() leave the parameters alone when the (averaged) gradient is not finite.

    Every peer of a round receives the same averaged gradient, so every peer skips the same update and they
    stay in step. It is the last line of defence: our own peers never send non-finite gradients.
    """
    unguarded_step = optimizer.step
    warn = RateLimitedLog(logger)

    def guarded_step(self, *args, **kwargs):
        grads = [param.grad for group in self.param_groups for param in group["params"]]
        if not all_finite(grads):
            warn("The averaged gradient is not finite (a peer sent inf/NaN): skipped this update")
            return None
        return unguarded_step(*args, **kwargs)

    optimizer.step = types.MethodType(guarded_step, optimizer)  # a bound method, as LR schedulers expect
    return optimizer


class FollowerProgressTracker(ProgressTracker):
    """The progress tracker of a follower (collab.follower), which has no samples of its own. hivemind's rule (the
    trainers' samples reached the target, or the estimated time of that has passed) triggers its round in time
    with the trainers' (without the estimate it triggered late, after the trainers' round had gone on without
    it). But once the trainers stop, the estimate passes too and the follower stepped alone with a zero gradient:
    so it steps only while some trainer has samples toward the next step."""

    @property
    def ready_to_update_epoch(self) -> bool:
        return super().ready_to_update_epoch and (self.global_epoch > self.local_progress.epoch
                                                  or self.global_progress.samples_accumulated > 0)


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that keeps this peer on the swarm's model (see collab.sync), with bounded state downloads
    and a finiteness check on local gradients.

    After every global step it classifies its own gradient round (RoundReport), publishes what it applied, and
    later compares that with the other peers' records. A peer that did not apply the swarm's update stops offering
    its state at once and downloads the state of a peer that did before it contributes again; a peer that keeps
    falling out of sync re-syncs less and less often and says what to change.
    """

    def __init__(self, *args, load_state_attempts: int = 5, load_state_backoff: float = 2.0, role: str = "trainer",
                 averaged_buffers: Sequence[torch.Tensor] = (), **kwargs):
        self.load_state_attempts, self.load_state_backoff, self.role = load_state_attempts, load_state_backoff, role
        self.averaged_buffers = tuple(averaged_buffers)  # averaged with the gradients (RoleGradientAverager)
        self.nonfinite_gradient_steps = self.state_downloads = 0
        self.discarded_accumulations = 0  # times this peer's accumulated gradients were thrown away
        self._warn_nonfinite = RateLimitedLog(logger)
        self.in_sync, self._suspect = True, False
        self.outcome_counts: Counter[str] = Counter()  # averaged / partial / failed / expired / alone
        self.resyncs = 0
        self.last_round: Optional[RoundReport] = None
        self.sync_events: list[dict] = []  # verdicts and re-syncs, for the trainer's journal (it drains the list)
        self._round_notes: dict = {}
        self._out_of_sync_streak, self._resync_failures, self._next_resync_epoch = 0, 0, 0
        self._ignore_verdicts_through = -1  # verdicts on steps before the last re-sync are moot
        super().__init__(*args, **kwargs)
        parameters = [param for group in self.state_averager.optimizer.param_groups for param in group["params"]]
        self.sync_probe = TensorProbe(parameters + list(self.averaged_buffers), size=SYNC_PROBE_SIZE, seed=1)
        self.gradient_probe = TensorProbe(parameters, size=SYNC_PROBE_SIZE, seed=1)
        self.sync_check = None
        if not self.auxiliary and self.use_gradient_averaging:
            self.sync_check = SyncCheck(self.dht, self.run_id, settle=max(2.0, self.matchmaking_time))

    # ---- what this peer's round came to ----

    def _update_global_epoch(self, grad_scaler) -> None:
        if self.sync_check is not None:
            self._take_verdict(self.sync_check.poll(force=True))  # the previous step's verdict comes first
        before = self.sync_probe.values()
        self._round_notes = dict(others=self._others_in_swarm(), expired=False, began=False, control=None)
        super()._update_global_epoch(grad_scaler)
        report = self.last_round = self._round_report()
        applied, applied_finite = self._applied_gradient() if self.use_gradient_averaging else ([], True)
        if report.outcome == "averaged" and not applied_finite:
            # a group with no samples (every member tagging along with weight zero) averages to 0/0: nothing applied
            report = self.last_round = RoundReport(report.step, "failed")
        self.outcome_counts[report.outcome] += 1
        if report.outcome in ("failed", "expired") and self._round_notes["others"]:
            self._suspect = True  # it stepped differently from the others: no offering until the check says
        if self.sync_check is not None:
            after = self.sync_probe.values()
            self.sync_check.publish(SyncRecord(
                step=self.local_epoch, gradient=applied, parameters=after,
                move=max((abs(a - b) for a, b in zip(after, before)), default=0.0),
                serving=not self.client_mode and self.in_sync and not self._suspect, outcome=report.outcome))
        self._update_offer_priority()

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        scheduled = self.scheduled_grads
        self._round_notes["expired"] = scheduled is not None and (scheduled.triggered or scheduled.done())
        began = super()._begin_averaging_gradients(grad_scaler)
        self._round_notes["began"] = began
        return began

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control: Optional[StepControl]):
        self._round_notes["control"] = maybe_step_control
        return super()._average_gradients_and_load_into_optimizer(maybe_step_control)

    def _round_report(self) -> RoundReport:
        notes, step = self._round_notes, self.local_epoch
        control = notes.get("control")
        if notes.get("began") and control is not None:
            if control.done() and not control.cancelled() and control.exception() is None:
                trainers, others = count_roles(control.result())
                return RoundReport(step, "averaged", max(trainers, 1), others)
            return RoundReport(step, "failed")
        if notes.get("expired"):
            return RoundReport(step, "expired")
        return RoundReport(step, "failed" if notes.get("others") else "alone")  # others seen, but no round began

    def _applied_gradient(self) -> tuple[list[float], bool]:
        """Probe of the gradient the optimizer just applied, and whether all of it was finite, in one read under the
        averager's lock (hivemind's averaged buffers keep it until the next round; with --delay_grad_averaging the
        round may still be running, so the check is approximate there). A non-finite average was not applied
        (skip_nonfinite_updates): its probe reads as zeros."""
        with self.grad_averager.gradient_tensors() as averaged:
            values, finite = self.gradient_probe.values(list(averaged)), all_finite(list(averaged))
        return (values if finite else [0.0] * len(values)), finite

    # ---- the value check and the re-sync ----

    def _take_verdict(self, verdict: Optional[SyncVerdict]) -> None:
        if verdict is None or verdict.step <= self._ignore_verdicts_through:
            return
        own_outcome = self.last_round.outcome if self.last_round and self.last_round.step == verdict.step else None
        self.sync_events.append(dict(event="sync", **dataclasses.asdict(verdict), outcome=own_outcome))
        if verdict.in_sync:
            if verdict.peers_compared > 1:  # a suspect peer stays suspect until others' records clear it
                self._suspect, self._out_of_sync_streak = False, 0
            if self.in_sync:
                self._update_offer_priority()
            return
        if own_outcome == "averaged":  # hivemind said the round succeeded, yet the values differ: a partial round
            self.outcome_counts["partial"] += 1
            self.sync_events[-1]["outcome"] = "partial"
        self.in_sync = False
        self._out_of_sync_streak += 1
        self._update_offer_priority()
        logger.warning(f"Global step {verdict.step}: this peer did not apply the swarm's update "
                       f"({'; '.join(verdict.reasons)}; its round: {self.sync_events[-1]['outcome']}): it stops "
                       f"offering its state and re-syncs from a peer in sync")
        if self._out_of_sync_streak == OUT_OF_SYNC_BEFORE_ADVICE:
            logger.warning(f"This peer fell out of sync at {OUT_OF_SYNC_BEFORE_ADVICE} global steps in a row: its "
                           f"averaging rounds do not reach the other peers. Behind NAT or a firewall, restart it with "
                           f"--client_mode; make sure the swarm has a reachable peer (the coordinator or an aux peer, "
                           f"run_aux.py) and that this peer's port is open. It now re-syncs less and less often.")

    def step(self, *args, **kwargs):
        if self.sync_check is not None:
            self._take_verdict(self.sync_check.poll())
            if not self.in_sync and self.local_epoch >= self._next_resync_epoch:
                self.resync()
                return None  # local gradients computed on out-of-sync parameters are thrown away
        return super().step(*args, **kwargs)

    def resync(self) -> bool:
        """Download the state of a peer in sync; True if it arrived. Repeated failures space the attempts out."""
        before = self.local_epoch
        if self.load_state_from_peers():
            self.in_sync, self._suspect, self._resync_failures = True, False, 0
            self._ignore_verdicts_through = before
            self.resyncs += 1
            self._update_offer_priority()
            self.sync_events.append(dict(event="resynced", step=self.local_epoch, from_step=before))
            logger.info(f"Re-synced: this peer now holds the swarm's state of global step {self.local_epoch}")
            if self._out_of_sync_streak >= OUT_OF_SYNC_BEFORE_ADVICE:
                interval = min(2 ** (self._out_of_sync_streak - OUT_OF_SYNC_BEFORE_ADVICE + 1), MAX_RESYNC_INTERVAL)
                self._next_resync_epoch = self.local_epoch + interval
            return True
        self._resync_failures += 1
        interval = min(2 ** self._resync_failures, MAX_RESYNC_INTERVAL)
        self._next_resync_epoch = self.local_epoch + interval
        logger.warning(f"Could not re-sync (no peer in sync sent its state): training on, trying again in "
                       f"{interval} global step(s)")
        return False

    @property
    def suspect(self) -> bool:
        """Its last round failed or expired while others stepped: apart until the value check clears it."""
        return self._suspect

    def _update_offer_priority(self) -> None:
        """Offer this peer's state at its step (a coordinator a little lower, so that live trainers come first); a
        peer out of sync, or suspected to be, offers below every peer in sync."""
        if self.client_mode:
            return
        offset = 0.0 if self.role == "trainer" else COORDINATOR_PRIORITY_OFFSET
        if not self.in_sync or self._suspect:
            offset = OUT_OF_SYNC_PRIORITY_OFFSET
        self.state_averager.state_sharing_priority = self.local_epoch + offset
        if self.use_gradient_averaging:
            self.grad_averager.state_sharing_priority = self.local_epoch + offset

    def _make_progress_tracker(self, target_batch_size: int, **kwargs) -> ProgressTracker:
        if self.role != "coordinator":
            return super()._make_progress_tracker(target_batch_size, **kwargs)
        return FollowerProgressTracker(dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                                       client_mode=self.client_mode, status_loglevel=self.status_loglevel, start=True,
                                       **kwargs)

    def _make_gradient_averager(self, factory, **kwargs) -> GradientAverager:
        if not self.averaged_buffers:
            return super()._make_gradient_averager(factory, **kwargs)
        # hivemind binds the offloaded optimizer's .grad to the averaged tensors one to one, and asserts there are
        # as many as parameters; with the buffers behind the gradients, bind the gradients' part here instead
        offload, self.offload_optimizer = self.offload_optimizer, False
        try:
            grad_averager = super()._make_gradient_averager(factory, **kwargs)
        finally:
            self.offload_optimizer = offload
        if offload:
            optimized = [param for group in self.state_averager.optimizer.param_groups for param in group["params"]]
            with grad_averager.gradient_tensors() as averaged_gradients:
                for optimized_param, averaged_gradient in zip(optimized, averaged_gradients, strict=True):
                    optimized_param.grad = averaged_gradient
        return grad_averager

    def _load_averaged_gradients_into_optimizer_(self) -> None:
        """hivemind's, on the gradients' part of the averaged tensors; then the averaged buffers go into the model
        (after a round that averaged and after one that fell back to local gradients alike: see
        RoleGradientAverager.load_averaged_buffers_)."""
        self.grad_averager.round_to_wire_grid_()
        if not self.averaged_buffers:
            return super()._load_averaged_gradients_into_optimizer_()
        if not self.offload_optimizer:
            optimized = [param for group in self.state_averager.optimizer.param_groups for param in group["params"]]
            with torch.no_grad(), self.grad_averager.gradient_tensors() as averaged_gradients:
                for optimized_param, averaged_gradient in zip(optimized, averaged_gradients, strict=True):
                    if optimized_param.grad is None:
                        optimized_param.grad = averaged_gradient.clone()
                    else:
                        optimized_param.grad.copy_(averaged_gradient, non_blocking=True)
        self.grad_averager.load_averaged_buffers_()
        self.grad_averager.notify_used_averaged_gradients()

    def _make_state_averager(self, **kwargs) -> ReportingStateAverager:
        return ReportingStateAverager(
            dht=self.dht, prefix=f"{self.run_id}_state_averager", min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout, shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer, custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel, next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode, auxiliary=self.auxiliary, start=True, **kwargs,
        )

    def _check_and_accumulate_gradients(self, batch_size: int, grad_scaler) -> bool:
        # hivemind checks fp16 gradients through its GradScaler; fp32 ones are checked here, with the same remedy:
        # drop this peer's accumulated gradients and report no progress, so nothing non-finite is ever averaged.
        if grad_scaler is None and not all_finite([param.grad for param in self.grad_averager.parameters]):
            self.nonfinite_gradient_steps += 1
            self._warn_nonfinite("Local gradients are not finite: dropped them (this peer's samples since the "
                                 "last global step are not sent)")
            self.tracker.report_local_progress(self.local_epoch, samples_accumulated=0)
            self.grad_averager.reset_accumulated_grads_()
            valid = False
        else:
            valid = super()._check_and_accumulate_gradients(batch_size, grad_scaler)
        self.discarded_accumulations += not valid
        return valid

    def _others_in_swarm(self) -> bool:
        """Whether the progress tracker sees another peer: hivemind's own test, at the global step, for holding a
        gradient round and a state round at all (`num_peers > 1` in _begin_averaging_gradients and
        _update_global_epoch); a lone peer proceeds with its local gradients and averages no state."""
        return self.tracker.global_progress.num_peers > 1

    def _maybe_schedule_gradient_averaging(self) -> None:
        # hivemind pre-schedules the gradient round `matchmaking_time` before each global step even for a lone peer,
        # then cancels it at the step ("Skipping pre-scheduled averaging round: there are no other peers"). Until
        # then the averager's matchmaking, finding no leader, asks the DHT for one again at once, in a loop
        # (PotentialLeaders: an empty queue re-triggers get_averagers), which costs the averager, DHT, libp2p daemon
        # and the DHT neighbours CPU for nothing (benchmarks/training_overhead.py: most of a lone trainer's
        # overhead on a CPU). So pre-schedule only when the tracker sees another peer, hivemind's own condition for
        # holding the round: it is checked again at every local step, and if another peer appears only at the
        # global step, hivemind starts the round there (grad_averager.step without a pre-scheduled control).
        if self._others_in_swarm():
            super()._maybe_schedule_gradient_averaging()

    def _maybe_schedule_state_averaging(self) -> None:
        # Same as above for the state round, which hivemind holds only when `num_peers > 1` at the global step.
        if self._others_in_swarm():
            super()._maybe_schedule_state_averaging()

    def load_state_from_peers(self, **kwargs) -> bool:
        """Download the newest state, trying again with back-off when donors fail; True if a state arrived.

        hivemind's version retries forever and logs a traceback each time. Here one call makes at most
        --load_state_attempts attempts (hivemind itself moves on to the next donor within an attempt); when
        all fail, the peer goes on with its local state and its old step, and hivemind asks again.
        """
        if self.scheduled_grads is not None and not self.scheduled_grads.done():
            self._tag_along_with_zero_weight(self.scheduled_grads)  # leaving a round would stall the others
            self.scheduled_grads = None
        self.state_averager.step(wait_for_delayed_updates=True)
        with self.tracker.pause_updates():
            loaded = self._download_state(**kwargs)
            # the swarm may have stepped during the download: catch up, but only with a state that arrived (a peer
            # that bumped its step over a failed download would serve stale parameters as current ones)
            if loaded and self.tracker.global_epoch - 1 <= self.local_epoch < self.tracker.global_epoch:
                self.state_averager.local_epoch = self.tracker.global_epoch
            self.tracker.report_local_progress(local_epoch=self.local_epoch, samples_accumulated=0)
            if self.use_gradient_averaging:
                self.grad_averager.reset_accumulated_grads_()
                self.discarded_accumulations += 1
            self._update_offer_priority()
        return loaded

    def _download_state(self, **kwargs) -> bool:
        for attempt in range(1, self.load_state_attempts + 1):
            check_stop()
            donors = {peer: priority for peer, priority in self.state_averager.donors().items()
                      if priority >= self.local_epoch + OUT_OF_SYNC_PRIORITY_OFFSET / 2}  # not behind, not out of sync
            if not donors:
                logger.info("No other peer in sync offers its state yet: keeping the local state")
                return False
            started = time.monotonic()
            try:
                # hivemind's Optimizer also downloads the donor's gradient buffers here, then never loads them
                # (DecentralizedAverager only returns them) and zeroes the accumulators: a quarter of an
                # ALBERT-large join's bytes for nothing (benchmarks/joining.py). We skip that download.
                epoch = self.state_averager.load_state_from_peers(timeout=self.load_state_timeout, **kwargs)
                problem = None if epoch is not None else f"none of the {len(donors)} peer(s) offering it sent it"
            except Exception as e:  # timeouts, vanished peers, truncated streams
                epoch, problem = None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            received = self.state_averager.downloaded_epoch
            if epoch is None and received is not None:
                logger.warning(f"Kept the local state of global step {self.local_epoch}: the state received "
                               f"(global step {received}) could not be used")
                return False
            if problem is None:
                self.state_downloads += 1
                logger.info(f"Downloaded the training state of global step {epoch} in "
                            f"{time.monotonic() - started:.1f}s (attempt {attempt})")
                return True
            if attempt == self.load_state_attempts:
                logger.warning(f"Could not download the training state in {attempt} attempts ({problem}); going on "
                               f"with the local state")
                return False
            delay = self.load_state_backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
            logger.warning(f"Downloading the training state failed ({problem}); attempt {attempt + 1} of "
                           f"{self.load_state_attempts} in {delay:.1f}s")
            time.sleep(delay)
        return False


def averager_kwargs(collab: CollaborationArguments, averager: AveragerArguments) -> dict:
    """Settings that must reach *both* averagers (gradients and state)."""
    return dict(dataclasses.asdict(averager), bandwidth=collab.bandwidth)


def create_optimizer(
    *,
    dht: hivemind.DHT,
    peer: PeerArguments,
    collab: CollaborationArguments,
    averager: AveragerArguments,
    tracker: ProgressTrackerArguments,
    params: Iterable,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: Optional[SchedulerFactory],
    batch_size_per_step: Optional[int],
    auxiliary: bool = False,
    role: Optional[str] = None,
    averaged_buffers: Sequence[torch.Tensor] = (),
) -> SwarmOptimizer:
    """A hivemind.Optimizer that accumulates until the swarm reaches the target batch, then averages and steps.

    `averaged_buffers` (a model's BatchNorm running statistics) are averaged with the gradients at every global
    step and travel with the state that joining peers download; every peer of a run must pass the same ones.
    """
    compression = make_compression(collab.compression)
    role = role or ("aux" if auxiliary else "trainer")
    shared_averager_kwargs = averager_kwargs(collab, averager)
    return SwarmOptimizer(
        dht=dht,
        run_id=peer.run_id,
        target_batch_size=collab.target_batch_size - collab.batch_size_lead,
        batch_size_per_step=None if auxiliary else batch_size_per_step,
        params=params,
        optimizer=lambda param_groups: skip_nonfinite_updates(optimizer_factory(param_groups)),
        scheduler=scheduler_factory,
        matchmaking_time=collab.matchmaking_time,
        averaging_timeout=collab.averaging_timeout,
        load_state_timeout=collab.load_state_timeout,
        load_state_attempts=collab.load_state_attempts,
        # Gradients accumulate in .grad (no second copy). With AMP this requires hivemind.GradScaler.
        reuse_grad_buffers=not auxiliary,
        offload_optimizer=collab.offload_optimizer,
        delay_optimizer_step=collab.delay_optimizer_step,
        delay_grad_averaging=collab.delay_grad_averaging,
        average_state_every=collab.average_state_every or NEVER,
        average_opt_statistics=tuple(collab.average_opt_statistics),
        client_mode=dht.client_mode,
        auxiliary=auxiliary,
        grad_compression=compression,
        state_averaging_compression=compression,
        role=role,
        grad_averager_factory=partial(RoleGradientAverager, role=role, buffers=averaged_buffers,
                                      **shared_averager_kwargs),
        averaged_buffers=averaged_buffers,
        extra_tensors=tuple(averaged_buffers),
        averager_opts=shared_averager_kwargs,
        tracker_opts=dataclasses.asdict(tracker),
        verbose=collab.verbose_optimizer,
    )
