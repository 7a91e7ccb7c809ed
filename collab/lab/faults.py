"""Faults injected on purpose into one trainer process, for the chaos harness and the tests.

Production code has no fault code: a trainer misbehaves only when it is started through the launcher

    python -m collab.lab.with_faults --faults "nonfinite_loss@20+12,nonfinite_grads@40+2" albert/run_trainer.py ...

which parses the plan, calls `install(plan)` (monkeypatches inside that process only), then runs the script.
This plan makes local steps 20 to 31 of the trainer produce a NaN loss, and local steps 40 and 41 NaN gradients
with a finite loss: the two ways a real peer goes bad (an overflow in the forward pass, a broken backward kernel).
A peer with faults says so in its log at start, so an injected fault is never mistaken for a real one.

A plan is KIND@START+COUNT items: COUNT consecutive steps from START. Each kind is keyed by one step counter
(`FaultKind.keyed_by`): "local step" is the trainer's `attempted_steps` (1 for its first local step), "global
step" is the swarm's epoch (`SwarmOptimizer.local_epoch`). Kinds live in the `KINDS` registry; a new kind is a
function that patches what it needs, registered with `@fault_kind(NAME, keyed_by, help)`:

    @fault_kind("my_fault", GLOBAL_STEP, "what goes wrong")
    def _install_my_fault(plan: FaultPlan) -> None:
        ...  # patch e.g. a SwarmOptimizer method; inside it, act when plan.active("my_fault", self.local_epoch)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from collab.errors import UserError

logger = logging.getLogger(__name__)

LOCAL_STEP = "local step"  # CollaborativeTrainer.attempted_steps
GLOBAL_STEP = "global step"  # SwarmOptimizer.local_epoch


@dataclass(frozen=True)
class FaultKind:
    name: str
    keyed_by: str  # LOCAL_STEP or GLOBAL_STEP
    install: Callable[["FaultPlan"], None]  # patches what the fault needs, inside this process
    help: str


KINDS: dict[str, FaultKind] = {}


def fault_kind(name: str, keyed_by: str, help: str) -> Callable:
    """Register an installer for the fault kind `name` (see the module docstring)."""
    assert keyed_by in (LOCAL_STEP, GLOBAL_STEP), keyed_by

    def register(installer: Callable[["FaultPlan"], None]) -> Callable[["FaultPlan"], None]:
        KINDS[name] = FaultKind(name, keyed_by, installer, help)
        return installer

    return register


@dataclass
class FaultPlan:
    windows: dict[str, list[range]] = field(default_factory=dict)  # kind -> the steps it is active on
    spec: str = ""
    fired: set[tuple[str, int]] = field(default_factory=set)  # (kind, window start) of once-per-window faults

    @classmethod
    def parse(cls, spec: str) -> "FaultPlan":
        plan = cls(spec=spec)
        for item in filter(None, (part.strip() for part in spec.split(","))):
            try:
                kind, window = item.split("@")
                start, length = (int(number) for number in window.split("+"))
            except ValueError:
                raise UserError(f"--faults: cannot read {item!r}; expected KIND@START+COUNT, "
                                f"e.g. nonfinite_loss@20+12") from None
            if kind not in KINDS or start < 0 or length < 1:
                raise UserError(f"--faults: {item!r} is invalid; KIND is one of {', '.join(KINDS)}, "
                                f"START >= 0, COUNT >= 1")
            plan.windows.setdefault(kind, []).append(range(start, start + length))
        return plan

    def active(self, kind: str, step: int) -> bool:
        """Whether `kind` is on at `step` (counted by the kind's own step counter)."""
        return any(step in window for window in self.windows.get(kind, ()))

    def first_in_window(self, kind: str, step: int) -> bool:
        """Whether `kind` fires at `step`: the first step inside a window at which this peer gets the chance (a
        peer that reaches a step by downloading the state skips it, so an exact step could be missed)."""
        for window in self.windows.get(kind, ()):
            if step in window and (kind, window.start) not in self.fired:
                self.fired.add((kind, window.start))
                return True
        return False

    def corrupt_loss(self, loss: torch.Tensor, local_step: int) -> torch.Tensor:
        return loss * float("nan") if self.active("nonfinite_loss", local_step) else loss

    def corrupt_grads(self, model: torch.nn.Module, local_step: int) -> None:
        if self.active("nonfinite_grads", local_step):
            param = next((param for param in model.parameters() if param.grad is not None), None)
            if param is not None:
                param.grad.view(-1)[0] = float("nan")


def install(plan: FaultPlan) -> None:
    """Patch this process so that it misbehaves as `plan` says; says so in the log. Only the launcher calls it."""
    if not plan.windows:
        return
    logger.warning(f"Fault injection is on (--faults {plan.spec}): this peer misbehaves on purpose")
    for kind in plan.windows:
        KINDS[kind].install(plan)


# Local-step kinds act on each CollaborativeTrainer of the process, right after it is constructed.

_trainer_patches: list[Callable] = []


def after_trainer_init(patch: Callable) -> None:
    """Call `patch(trainer)` on every CollaborativeTrainer constructed from now on (in this process)."""
    from collab.training import CollaborativeTrainer

    if not _trainer_patches:
        original_init = CollaborativeTrainer.__init__

        def patched_init(trainer, *args, **kwargs):
            original_init(trainer, *args, **kwargs)
            for each in _trainer_patches:
                each(trainer)

        CollaborativeTrainer.__init__ = patched_init
    _trainer_patches.append(patch)


@fault_kind("nonfinite_loss", LOCAL_STEP, "the loss of every batch of these local steps is NaN")
def _install_nonfinite_loss(plan: FaultPlan) -> None:
    def patch(trainer) -> None:
        compute_loss = trainer.compute_loss

        def faulty_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
            return plan.corrupt_loss(compute_loss(model, batch), trainer.attempted_steps)

        trainer.compute_loss = faulty_loss

    after_trainer_init(patch)


@fault_kind("nonfinite_grads", LOCAL_STEP, "one gradient entry is NaN when these local steps reach optimizer.step")
def _install_nonfinite_grads(plan: FaultPlan) -> None:
    def patch(trainer) -> None:
        step = trainer.opt.step

        def faulty_step(*args, **kwargs):
            plan.corrupt_grads(trainer.model, trainer.attempted_steps)
            return step(*args, **kwargs)

        trainer.opt.step = faulty_step  # this trainer's optimizer only (an instance attribute)

    after_trainer_init(patch)


# Global-step kinds act on the gradient round or the state download of SwarmOptimizer. "At global step S" means
# the round of the step this peer takes while its step (local_epoch) is S, i.e. the one that leads to S + 1.

class _FailedControl:
    """Stands in for a round's StepControl whose result never came (as after a timeout waiting for it)."""

    triggered = True

    def result(self, timeout=None):
        raise TimeoutError("injected fault: the gradient round failed after the trigger")

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def exception(self):
        return TimeoutError("injected fault")


@fault_kind("fail_round", GLOBAL_STEP,
            "the gradient round fails after the trigger (the others' round completes): hivemind steps with zeros; "
            "once per window, at its first step this peer averages at")
def _install_fail_round(plan: FaultPlan) -> None:
    from collab.optimizer import SwarmOptimizer

    original = SwarmOptimizer._average_gradients_and_load_into_optimizer

    def failing(opt, control):
        if control is None or not plan.first_in_window("fail_round", opt.local_epoch):
            return original(opt, control)
        try:  # let the real round finish first, so that it does not write into the buffers afterwards
            control.result(opt.averaging_timeout)
        except BaseException:
            pass
        logger.warning(f"Injected fault: the gradient round of global step {opt.local_epoch} fails")
        return original(opt, _FailedControl())

    SwarmOptimizer._average_gradients_and_load_into_optimizer = failing


@fault_kind("expire_round", GLOBAL_STEP,
            "the pre-scheduled gradient round of these steps is over before the step (this peer only tags along "
            "with zero weight, so the others average without it): hivemind then steps with the local gradient; "
            "once per window, at its first step this peer averages at")
def _install_expire_round(plan: FaultPlan) -> None:
    from collab.optimizer import SwarmOptimizer

    original = SwarmOptimizer._begin_averaging_gradients

    def expiring(opt, grad_scaler):
        if plan.first_in_window("expire_round", opt.local_epoch):
            logger.warning(f"Injected fault: the pre-scheduled round of global step {opt.local_epoch} expired")
            if opt.scheduled_grads is not None and not opt.scheduled_grads.done():
                opt._tag_along_with_zero_weight(opt.scheduled_grads)  # the others' round goes on without it
            opt.scheduled_grads = _FailedControl()  # done: hivemind sees a round that was used up
        return original(opt, grad_scaler)

    SwarmOptimizer._begin_averaging_gradients = expiring


@fault_kind("fail_download", GLOBAL_STEP, "the first state download attempted at these steps fails")
def _install_fail_download(plan: FaultPlan) -> None:
    from collab.optimizer import SwarmOptimizer

    original = SwarmOptimizer._download_state
    failed_at: set[int] = set()

    def failing(opt, **kwargs) -> bool:
        step = opt.local_epoch
        if plan.active("fail_download", step) and step not in failed_at:
            failed_at.add(step)
            logger.warning(f"Injected fault: the state download at global step {step} fails")
            return False
        return original(opt, **kwargs)

    SwarmOptimizer._download_state = failing
