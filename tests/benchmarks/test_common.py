"""benchmarks/common.py's group formation: every worker ends up in the same hivemind group, or all of them start
matchmaking over, whatever each one's matchmaking came to (hivemind's own steps are replaced by scripted ones)."""
from __future__ import annotations

import threading
import time
from typing import Optional

import pytest
from hivemind.averaging.control import AveragingStage

from benchmarks.common import ABANDONED, LEFT_OUT, MATCHED, FileBarrier, form_group

GRACE = 0.3


class ScriptedStep:
    """Stands in for hivemind's StepControl: matches after `match_after` seconds (never if None), or fails after
    `fail_after` seconds, as hivemind's step does at its deadline."""

    def __init__(self, match_after: Optional[float] = None, fail_after: Optional[float] = None):
        self.started, self.match_after, self.fail_after = time.monotonic(), match_after, fail_after
        self.cancelled = False

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _failed(self) -> bool:
        return self.fail_after is not None and self._elapsed() >= self.fail_after

    @property
    def stage(self) -> AveragingStage:
        if self.cancelled or self._failed():
            return AveragingStage.FINISHED
        if self.match_after is not None and self._elapsed() >= self.match_after:
            return AveragingStage.AWAITING_TRIGGER
        return AveragingStage.LOOKING_FOR_GROUP

    def done(self) -> bool:
        return self.cancelled or self._failed()

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def result(self, timeout: Optional[float] = None):
        raise RuntimeError("Averaging step failed: could not find a group")


def run_workers(tmp_path, scripts: list[list[dict]], max_attempts: int = 3) -> list[tuple]:
    """One thread per worker; worker r's k-th matchmaking behaves as scripts[r][k]. Returns (control, attempts, the
    steps it started) per worker."""
    results: list = [None] * len(scripts)

    def worker(rank: int) -> None:
        barrier = FileBarrier(tmp_path, rank, len(scripts), timeout=20)
        steps: list[ScriptedStep] = []

        def start_step() -> ScriptedStep:
            steps.append(ScriptedStep(**scripts[rank][len(steps)]))
            return steps[-1]

        control, attempts = form_group(start_step, barrier, tag="0", grace=GRACE, max_attempts=max_attempts)
        results[rank] = (control, attempts, steps)

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(len(scripts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(result is not None for result in results), "a worker did not come back"
    return results


def test_everyone_matched_goes_ahead_at_once(tmp_path):
    results = run_workers(tmp_path, [[dict(match_after=0.05)], [dict(match_after=0.1)], [dict(match_after=0.0)]])
    for control, attempts, steps in results:
        assert control is steps[0] and not control.cancelled and len(attempts) == 1
        assert attempts[0]["statuses"] == {"0": MATCHED, "1": MATCHED, "2": MATCHED}
        assert sorted(attempts[0]["matched_at"]) == ["0", "1", "2"]
    assert results[0][1] == results[1][1] == results[2][1]  # every worker reports the same attempts


def test_a_worker_left_out_of_the_group_makes_everyone_match_again(tmp_path):
    """Workers 0 and 1 hold a group (which must contain worker 2); worker 2 is still looking, as after hivemind
    accepted it into the group too late: it says so after the grace, everyone cancels and matches again."""
    started = time.monotonic()
    results = run_workers(tmp_path, [[dict(match_after=0.0), dict(match_after=0.1)],
                                     [dict(match_after=0.05), dict(match_after=0.0)],
                                     [dict(), dict(match_after=0.05)]])
    for control, attempts, steps in results:
        assert len(steps) == 2 and steps[0].cancelled and control is steps[1] and not control.cancelled
        assert [attempt["statuses"] for attempt in attempts] == [
            {"0": MATCHED, "1": MATCHED, "2": LEFT_OUT}, {"0": MATCHED, "1": MATCHED, "2": MATCHED}]
    assert results[0][1] == results[1][1] == results[2][1]
    assert time.monotonic() - started >= GRACE  # not before the grace


def test_a_failed_matchmaking_makes_everyone_match_again(tmp_path):
    results = run_workers(tmp_path, [[dict(), dict(match_after=0.0)], [dict(fail_after=0.05), dict(match_after=0.0)]])
    for control, attempts, steps in results:
        assert control is steps[1] and steps[0].done()
        first = attempts[0]["statuses"]
        assert first["0"] == ABANDONED and first["1"].startswith("failed: RuntimeError: Averaging step failed")


def test_no_group_after_every_attempt_is_reported_not_hidden(tmp_path):
    results = run_workers(tmp_path, [[dict(match_after=0.0)] * 2, [dict()] * 2], max_attempts=2)
    for control, attempts, steps in results:
        assert control is None and all(step.cancelled for step in steps)
        assert [attempt["statuses"] for attempt in attempts] == [{"0": MATCHED, "1": LEFT_OUT}] * 2


def test_exchange_gives_every_process_every_status(tmp_path):
    statuses: list = [None, None]

    def worker(rank: int) -> None:
        barrier = FileBarrier(tmp_path, rank, 2, timeout=10)
        statuses[rank] = barrier.exchange("x", lambda seen: f"r{rank}" if rank == 0 or 0 in seen else None)

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert statuses == [{0: "r0", 1: "r1"}] * 2
    with pytest.raises(TimeoutError, match="still waiting for"):
        FileBarrier(tmp_path, 0, 2, timeout=0.1).exchange("y", lambda seen: "alone")
