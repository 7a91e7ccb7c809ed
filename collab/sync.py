"""Is this peer still holding the swarm's model? A check by values, after every global step.

hivemind 1.1.12 compares only step numbers, so a peer that applied a different update than the others goes on as
if nothing happened. That happens when its gradient round failed after the trigger (it then steps with a zero
gradient, which LAMB's trust ratio turns into a full-size step along stale momentum), when its pre-scheduled round
expired (it steps with its own local gradient), when it saw no other peer at the step, when a reducer of its
group died mid-round (each survivor keeps its own values for that part: a "partial" round that hivemind reports
as a success), or when the swarm split into two groups. None of these can be told reliably from log lines or
from hivemind's return values, so every trainer compares values instead:

- right after its global step N it publishes, under the DHT key `<run_id>_sync_<N>`, a probe of the gradient it
  applied and of its parameters (the same fixed positions on every peer, collab.journal.ParameterProbe), how far
  its parameters moved in that step, and whether it serves its state;
- a little later (`settle` seconds, so the others' records have arrived) it reads every record of step N and
  picks the reference the same way every peer does: the record that the most records agree with, then one whose
  round averaged, then one that serves its state, then a tie-break by a hash of peer ID and step;
- it holds the swarm's model if the gradient it applied equals the reference's (relative to the reference
  gradient's largest value, within GRADIENT_TOLERANCE) and its parameters are within PARAMETER_TOLERANCE steps'
  sizes (the median move of the peers in this step) of the reference's, beyond the float16 rounding of each value. Otherwise it is out of sync: it stops offering its
  state and downloads the state of a peer that is in sync (collab.optimizer.SwarmOptimizer.resync).

The margins, measured (tests/collab/test_sync.py and the swarm tests): a successful round leaves peers' applied
gradients apart by their own compression residual, about 1e-3 of the largest value with fp16 and a few percent
with 8-bit; a failed round (zero gradient), a local-gradient step or a partial round differs by 0.3 to 1 or more.
GRADIENT_TOLERANCE = 0.15 sits between the two.

Hand-written because nothing in hivemind compares peers by value; the records are plain DHT entries of this run.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import hivemind
from hivemind.utils import get_dht_time

logger = logging.getLogger(__name__)

GRADIENT_TOLERANCE = 0.15  # largest |g - g_ref| over the probe, relative to the largest |g| or |g_ref|
PARAMETER_TOLERANCE = 0.25  # largest |x - x_ref| beyond fp16 rounding, in units of this step's size
FP16_RELATIVE_ROUNDING = 2.0**-10  # parameters averaged in fp16 may keep a gap of their own rounding
RECORD_EXPIRATION = 300.0
REPOLL_S = 1.0  # how often the records of the pending step are read again until the next step


@dataclass
class SyncRecord:
    """What one peer applied at one global step (published right after it)."""

    step: int
    gradient: list[float]  # probe of the averaged gradient this peer applied
    parameters: list[float]  # probe of its parameters right after the step
    move: float  # largest |x_after - x_before| over the probe: the size of this step
    serving: bool  # it can serve its state to others (not client mode, in sync)
    outcome: str  # its own account of the round: averaged / failed / expired / alone
    peer: str = ""  # hex peer ID (filled when read back)

    def to_dht(self) -> dict:
        record = asdict(self)
        record.pop("peer")
        return record

    @classmethod
    def from_dht(cls, peer: str, value) -> Optional["SyncRecord"]:
        try:
            record = cls(peer=peer, **value)
        except TypeError:
            return None
        if not (len(record.gradient) == len(record.parameters) > 0 and isinstance(record.step, int)):
            return None
        return record


@dataclass
class SyncVerdict:
    step: int
    in_sync: bool
    gradient_gap: float  # relative, see GRADIENT_TOLERANCE
    parameter_gap: float  # in units of this step's size, see PARAMETER_TOLERANCE
    reference: str  # hex peer ID of the reference record ("" when there was nothing to compare)
    peers_compared: int  # records of this step, this peer's included
    agreeing: int = 0  # records that agree with the reference
    reasons: list[str] = field(default_factory=list)


def gradient_gap(gradient: Sequence[float], reference: Sequence[float]) -> float:
    """Largest difference relative to the largest value of either (symmetric, so a zero gradient is never
    close to a real one; two zero gradients, a swarm whose rounds all failed alike, have no gap)."""
    scale = max((abs(value) for value in (*gradient, *reference)), default=0.0)
    if not math.isfinite(scale):
        return math.inf
    if scale == 0.0:
        return 0.0
    return max(abs(a - b) for a, b in zip(gradient, reference)) / scale


def parameter_gap(parameters: Sequence[float], reference: Sequence[float], move: float) -> float:
    """Largest gap beyond the fp16 rounding of each value, in units of `move` (the size of this step)."""
    excess = max(max(0.0, abs(a - b) - FP16_RELATIVE_ROUNDING * abs(b)) for a, b in zip(parameters, reference))
    if not math.isfinite(excess) or any(not math.isfinite(value) for value in (*parameters, *reference)):
        return math.inf
    if excess == 0.0:
        return 0.0
    return excess / move if move > 0 else float("inf")


def step_size(records: Sequence[SyncRecord]) -> float:
    """The size of this step: the median move of the peers (a peer that just downloaded reports none)."""
    moves = sorted(record.move for record in records if record.move > 0)
    return moves[len(moves) // 2] if moves else 0.0


def agrees(record: SyncRecord, reference: SyncRecord, move: float) -> bool:
    return (gradient_gap(record.gradient, reference.gradient) <= GRADIENT_TOLERANCE
            and parameter_gap(record.parameters, reference.parameters, move) <= PARAMETER_TOLERANCE)


def _tie_break(record: SyncRecord) -> int:
    return int.from_bytes(hashlib.sha256(f"{record.peer}/{record.step}".encode()).digest()[:8], "big")


def choose_reference(records: Sequence[SyncRecord]) -> tuple[SyncRecord, int]:
    """The record most others agree with, then one whose round averaged, then one that applied a gradient (not
    the zeros of a failed round, or of the coordinator stepping without any trainer's average), then one that
    serves its state, then a tie-break every peer computes alike (two peers that disagree: the one whose round
    failed re-syncs)."""
    move = step_size(records)
    support = {record.peer: sum(agrees(other, record, move) for other in records) for record in records}
    reference = max(records, key=lambda record: (support[record.peer], record.outcome == "averaged",
                                                 any(value != 0.0 for value in record.gradient), record.serving,
                                                 _tie_break(record)))
    return reference, support[reference.peer]


def judge(own: SyncRecord, records: Sequence[SyncRecord]) -> SyncVerdict:
    """Compare this peer's record with the reference among all records of the same step (its own included)."""
    records = [record for record in records if record.step == own.step and record.peer != own.peer] + [own]
    if len(records) == 1:
        return SyncVerdict(own.step, True, 0.0, 0.0, "", 1)
    reference, agreeing = choose_reference(records)
    grad_gap = gradient_gap(own.gradient, reference.gradient)
    param_gap = parameter_gap(own.parameters, reference.parameters, step_size(records))
    reasons = []
    if grad_gap > GRADIENT_TOLERANCE:
        reasons.append(f"the gradient it applied differs from the swarm's by {grad_gap:.3g} of its largest value")
    if param_gap > PARAMETER_TOLERANCE:
        reasons.append(f"its parameters are {param_gap:.3g} steps' moves from the swarm's")
    return SyncVerdict(own.step, not reasons, grad_gap, param_gap, reference.peer, len(records), agreeing, reasons)


class SyncCheck:
    """Publishes this peer's record after each global step and judges it against the others' records.

    Records of one step arrive over several seconds (a group that finished later, a DHT read that missed one), so
    the first verdict comes `settle` seconds after the step and the record set is read again every REPOLL_S until
    the next step: a verdict is returned the first time, and again only if a newer set of records says this
    peer is out of sync.
    """

    def __init__(self, dht: hivemind.DHT, run_id: str, settle: float):
        self.dht, self.run_id, self.settle = dht, run_id, settle
        self.peer = dht.peer_id.to_bytes().hex()
        self.pending: Optional[SyncRecord] = None
        self._next_read, self._records_seen, self._judged = 0.0, 0, False

    def key(self, step: int) -> str:
        return f"{self.run_id}_sync_{step}"

    def publish(self, record: SyncRecord) -> None:
        record.peer = self.peer
        self.dht.store(self.key(record.step), subkey=self.dht.peer_id.to_bytes(), value=record.to_dht(),
                       expiration_time=get_dht_time() + RECORD_EXPIRATION, return_future=True)
        self.pending = record
        self._next_read, self._records_seen, self._judged = time.monotonic() + self.settle, 0, False

    def records(self, step: int) -> list[SyncRecord]:
        found = self.dht.get(self.key(step), latest=True)
        if found is None or not isinstance(found.value, dict):
            return []
        records = []
        for subkey, entry in found.value.items():
            peer = subkey.hex() if isinstance(subkey, bytes) else str(subkey)
            if isinstance(entry.value, dict) and (record := SyncRecord.from_dht(peer, entry.value)) is not None:
                records.append(record)
        return records

    def poll(self, force: bool = False) -> Optional[SyncVerdict]:
        """A verdict on the pending step when there is news (see the class docstring); `force` reads now and ends
        the watch (the next step is being taken)."""
        own = self.pending
        if own is None or (not force and time.monotonic() < self._next_read):
            return None
        self._next_read = time.monotonic() + REPOLL_S
        records = self.records(own.step)
        if force:
            self.pending = None
        if len(records) <= self._records_seen and self._judged:
            return None  # nothing new since the last verdict
        self._records_seen = len(records)
        verdict = judge(own, records)
        first, self._judged = not self._judged, True
        if not verdict.in_sync:
            self.pending = None  # the optimizer re-syncs; nothing more to watch for this step
        return verdict if first or not verdict.in_sync else None
