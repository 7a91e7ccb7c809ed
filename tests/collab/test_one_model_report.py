"""collab.lab.one_model on synthetic journals: what counts as one model, and what is excused."""
from collab.lab.one_model import one_model_report


def journal(probes: dict[int, list[float]], out_of_sync_at: tuple[int, ...] = ()) -> list[dict]:
    events = [dict(event="step", step=step, probe=probe, time=float(step)) for step, probe in probes.items()]
    events += [dict(event="sync", step=step, in_sync=False, time=step + 0.5) for step in out_of_sync_at]
    return events


def trajectory(steps: int, move: float = 0.01, start: float = 0.1) -> dict[int, list[float]]:
    return {step: [start + move * step, -start - move * step] for step in range(1, steps + 1)}


def test_identical_and_fp16_close_trainers_hold_one_model():
    a = trajectory(6)
    b = {step: [value * (1 + 2**-12) for value in probe] for step, probe in a.items()}  # within fp16 rounding
    report = one_model_report({"a": journal(a), "b": journal(b)})
    assert report.held and len(report.pairs) == 5  # steps 2..6 (a step's move needs the previous step)


def test_a_gap_of_half_a_step_is_a_violation_unless_the_check_found_it_and_it_closed_in_time():
    a = trajectory(8)
    b = {step: [value + (0.005 if step in (4, 5) else 0.0) for value in probe] for step, probe in a.items()}
    found = one_model_report({"a": journal(a), "b": journal(b, out_of_sync_at=(4,))})
    assert found.held and found.out_of_sync == {"a": [], "b": [4]} and abs(found.worst(excused=True) - 0.005) < 1e-12
    unnoticed = one_model_report({"a": journal(a), "b": journal(b)})
    assert [pair["step"] for pair in unnoticed.violations] == [4, 5]
    late = {step: [value + (0.005 if step >= 4 else 0.0) for value in probe] for step, probe in a.items()}
    lasting = one_model_report({"a": journal(a), "b": journal(late, out_of_sync_at=(4,))})
    assert [pair["step"] for pair in lasting.violations] == [7, 8]  # excused for 4, 5, 6 only
