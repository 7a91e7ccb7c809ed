"""A peer's journal: one JSON line per event in `<output_dir>/journal.jsonl`, appended as it happens.

It is the peer's own account of what it did (state downloads, what it contributed to each global step, a probe
of its parameters after each step), readable with `jq` and read by the chaos harness and the tests. Lines are
small and flushed at once, so a peer killed with SIGKILL leaves a journal that is complete up to its last event.

The parameter probe reads the same few hundred positions of the model on every peer, so probes of two peers at
the same global step show how far apart their parameters are without shipping the model anywhere.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

JOURNAL_FILE = "journal.jsonl"
PROBE_SIZE = 256


class Journal:
    """Appends events to a JSONL file; a journal without a path writes nothing."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if self.path is None:
            return
        line = json.dumps(dict(event=event, time=time.time(), pid=os.getpid(), **fields), allow_nan=True)
        with open(self.path, "a") as file:
            file.write(line + "\n")


def read_journal(path: Path) -> list[dict]:
    """All events of a journal, oldest first; a line cut short by a kill is ignored."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


class TensorProbe:
    """A fixed, seeded sample of positions across a list of tensors: the same on every peer that has the same list."""

    def __init__(self, tensors: list[torch.Tensor], size: int = PROBE_SIZE, seed: int = 0):
        self.tensors = list(tensors)
        sizes = torch.tensor([tensor.numel() for tensor in self.tensors])
        offsets = torch.cumsum(sizes, 0) - sizes
        positions = torch.randint(int(sizes.sum()), (size,), generator=torch.Generator().manual_seed(seed))
        owners = torch.searchsorted(offsets, positions, right=True) - 1
        self.picks: list[tuple[int, torch.Tensor]] = [
            (int(owner), positions[owners == owner] - offsets[owner]) for owner in owners.unique()
        ]

    @torch.no_grad()
    def values(self, tensors: Optional[list[Optional[torch.Tensor]]] = None) -> list[float]:
        """The probed values of `tensors` (default: the probed tensors themselves; None reads as zeros)."""
        tensors = self.tensors if tensors is None else tensors
        values: list[float] = []
        for owner, local in self.picks:
            tensor = tensors[owner]
            if tensor is None:
                values.extend([0.0] * len(local))
            else:
                values.extend(tensor.detach().reshape(-1)[local.to(tensor.device)].double().tolist())
        return values


class ParameterProbe(TensorProbe):
    """A probe of a model's parameters and floating-point buffers (BatchNorm statistics, which the peers average
    too), sorted by name so that the positions match on every peer."""

    def __init__(self, model: torch.nn.Module, size: int = PROBE_SIZE, seed: int = 0):
        floating_buffers = [(name, buffer) for name, buffer in model.named_buffers() if buffer.is_floating_point()]
        named = sorted([*model.named_parameters(), *floating_buffers], key=lambda item: item[0])
        super().__init__([param for _, param in named], size, seed)
        self.parameters = self.tensors

    @torch.no_grad()
    def read(self) -> dict:
        """Probe values, whether every parameter is finite, and the global parameter norm."""
        norms = torch.stack([param.detach().float().norm() for param in self.parameters])
        norm = float(norms.norm())
        return dict(probe=self.values(), finite=math.isfinite(norm), param_norm=norm)


def optimizer_digest(state_dict: dict) -> dict[str, float]:
    """Sum of every optimizer statistic by name (e.g. exp_avg, exp_avg_sq): equal digests, equal states."""
    sums: dict[str, float] = {}
    for per_param in state_dict.get("state", {}).values():
        if not isinstance(per_param, dict):
            continue
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                sums[name] = sums.get(name, 0.0) + float(value.detach().double().sum())
    return sums


def probe_distance(first: list[float], second: list[float]) -> float:
    """Largest absolute difference between two probes of the same model (positions match one to one)."""
    if len(first) != len(second):
        raise ValueError("probes of different models cannot be compared")
    return max((abs(a - b) for a, b in zip(first, second)), default=0.0)
