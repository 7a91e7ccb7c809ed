"""Did a swarm's trainers hold one model during training? Measured from their journals (collab.journal), before the
end-of-run agreement copies one peer onto the others.

After every global step each trainer journals a probe of its parameters (the same positions on every peer). Two
trainers hold the same model at a step when every probed value agrees within the bound of the production
compression, fp16: the fp16 rounding of the value plus a quarter of the step's move (each peer keeps its own
rounding residual of the averaged gradient; collab.sync uses the same margin). A trainer that missed the swarm's
update is excused from its value check's verdict until RESYNC_WITHIN steps later, the time the guarantee gives it
to re-sync; a gap that lasts longer, or that no verdict found, is a violation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from collab.journal import probe_distance

FP16_ROUNDING = 2.0**-10  # relative rounding of a value averaged in fp16 (half a unit in the last place, twice)
STEP_FRACTION = 0.25  # of the step's move: collab.sync.PARAMETER_TOLERANCE
RESYNC_WITHIN = 2  # global steps after a fault by which the faulty trainer holds the swarm's model again


def steps_before_agreement(events: list[dict], since: float = 0.0) -> dict[int, dict]:
    """A trainer's journaled global steps (written during training, before the end-of-run agreement)."""
    return {e["step"]: e for e in events if e["event"] == "step" and e["time"] >= since}


def repair_windows(events: list[dict]) -> set[int]:
    """Steps at which a trainer may be apart: from each step its value check found it out of sync until
    RESYNC_WITHIN steps later."""
    found = {e["step"] for e in events if e["event"] == "sync" and not e["in_sync"]}
    return {step + offset for step in found for offset in range(RESYNC_WITHIN + 1)}


def step_moves(by_trainer: dict[str, dict[int, dict]]) -> dict[int, float]:
    """The size of each step: the median over trainers of the largest probe change from the previous step."""
    moves: dict[int, list[float]] = {}
    for steps in by_trainer.values():
        for step, event in steps.items():
            if step - 1 in steps:
                moves.setdefault(step, []).append(probe_distance(event["probe"], steps[step - 1]["probe"]))
    return {step: sorted(values)[len(values) // 2] for step, values in moves.items()}


def apart(first: list[float], second: list[float], move: float) -> float:
    """How far two probes are in units of the bound (above 1: not the same model)."""
    return max((abs(a - b) / (FP16_ROUNDING * max(abs(a), abs(b)) + STEP_FRACTION * move + 1e-12)
                for a, b in zip(first, second)), default=0.0)


@dataclass
class OneModelReport:
    pairs: list[dict] = field(default_factory=list)  # step, a, b, distance, bound_units, excused
    violations: list[dict] = field(default_factory=list)
    out_of_sync: dict[str, list[int]] = field(default_factory=dict)  # steps each trainer's check found it apart

    @property
    def held(self) -> bool:
        return not self.violations

    def worst(self, excused: bool) -> float:
        return max((pair["distance"] for pair in self.pairs if pair["excused"] == excused), default=0.0)


def one_model_report(journals: dict[str, list[dict]], since: float = 0.0) -> OneModelReport:
    """Compare every pair of trainers at every step both journaled (see the module docstring)."""
    by_trainer = {name: steps_before_agreement(events, since) for name, events in journals.items()}
    excused = {name: repair_windows(events) for name, events in journals.items()}
    moves = step_moves(by_trainer)
    report = OneModelReport(out_of_sync={name: sorted(e["step"] for e in events
                                                      if e["event"] == "sync" and not e["in_sync"])
                                         for name, events in journals.items()})
    names = sorted(by_trainer)
    for step in sorted(moves):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if step not in by_trainer[a] or step not in by_trainer[b]:
                    continue
                first, second = by_trainer[a][step]["probe"], by_trainer[b][step]["probe"]
                pair = dict(step=step, a=a, b=b, distance=probe_distance(first, second),
                            bound_units=apart(first, second, moves[step]),
                            excused=step in excused[a] or step in excused[b])
                report.pairs.append(pair)
                if pair["bound_units"] > 1 and not pair["excused"]:
                    report.violations.append(pair)
    return report
