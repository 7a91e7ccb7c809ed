import pytest
import torch

from collab.errors import UserError
from collab.faults import FaultPlan


def test_windows_cover_exactly_the_requested_local_steps():
    plan = FaultPlan.parse("nonfinite_loss@3+2, nonfinite_grads@10+1")
    assert [step for step in range(15) if plan.active("nonfinite_loss", step)] == [3, 4]
    assert [step for step in range(15) if plan.active("nonfinite_grads", step)] == [10]
    assert not FaultPlan.parse("").windows


def test_corruption_only_inside_the_window():
    plan = FaultPlan.parse("nonfinite_loss@1+1,nonfinite_grads@2+1")
    loss = torch.tensor(2.0)
    assert torch.isnan(plan.corrupt_loss(loss, 1)) and plan.corrupt_loss(loss, 2) == 2.0
    model = torch.nn.Linear(3, 1)
    model(torch.ones(1, 3)).sum().backward()
    plan.corrupt_grads(model, 1)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    plan.corrupt_grads(model, 2)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("spec", ["nonfinite_loss", "nonfinite_loss@x+1", "exploding@1+1", "nonfinite_grads@1+0"])
def test_bad_specs_are_user_errors(spec):
    with pytest.raises(UserError, match="COLLAB_FAULTS"):
        FaultPlan.parse(spec)
