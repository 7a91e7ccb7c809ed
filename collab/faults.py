"""Faults injected on purpose, for the chaos harness and the tests. Off unless COLLAB_FAULTS is set.

    COLLAB_FAULTS="nonfinite_loss@20+12,nonfinite_grads@40+2"

makes local steps 20 to 31 of this trainer produce a NaN loss, and local steps 40 and 41 NaN gradients with a
finite loss: the two ways a real peer goes bad (an overflow in the forward pass, a broken backward kernel).
A peer with faults says so in its log at start, so an injected fault is never mistaken for a real one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from collab.errors import UserError

logger = logging.getLogger(__name__)

FAULTS_ENV = "COLLAB_FAULTS"
KINDS = ("nonfinite_loss", "nonfinite_grads")


@dataclass
class FaultPlan:
    windows: dict[str, list[range]] = field(default_factory=dict)  # kind -> local steps it is active on

    @classmethod
    def parse(cls, spec: str) -> "FaultPlan":
        plan = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            try:
                kind, window = item.split("@")
                start, length = (int(number) for number in window.split("+"))
            except ValueError:
                raise UserError(f"{FAULTS_ENV}: cannot read {item!r}; expected KIND@START+COUNT, "
                                f"e.g. nonfinite_loss@20+12") from None
            if kind not in KINDS or start < 0 or length < 1:
                raise UserError(f"{FAULTS_ENV}: {item!r} is invalid; KIND is one of {', '.join(KINDS)}, "
                                f"START >= 0, COUNT >= 1")
            plan.windows.setdefault(kind, []).append(range(start, start + length))
        return plan

    @classmethod
    def from_environment(cls) -> "FaultPlan":
        spec = os.environ.get(FAULTS_ENV, "")
        plan = cls.parse(spec)
        if plan.windows:
            logger.warning(f"Fault injection is on ({FAULTS_ENV}={spec}): this peer misbehaves on purpose")
        return plan

    def active(self, kind: str, local_step: int) -> bool:
        return any(local_step in window for window in self.windows.get(kind, ()))

    def corrupt_loss(self, loss: torch.Tensor, local_step: int) -> torch.Tensor:
        return loss * float("nan") if self.active("nonfinite_loss", local_step) else loss

    def corrupt_grads(self, model: torch.nn.Module, local_step: int) -> None:
        if self.active("nonfinite_grads", local_step):
            param = next(param for param in model.parameters() if param.grad is not None)
            param.grad.view(-1)[0] = float("nan")
