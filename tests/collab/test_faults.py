"""Faults injected on purpose (collab/lab/faults.py) and their launcher (collab/lab/with_faults.py)."""
import json
import logging
import subprocess
import sys

import pytest
import torch

from collab.arguments import TrainingArguments
from collab.errors import UserError
from collab.lab import faults
from collab.lab.faults import GLOBAL_STEP, KINDS, LOCAL_STEP, FaultPlan, install
from collab.lab.swarm import REPO_ROOT
from collab.training import CollaborativeTrainer


def test_windows_cover_exactly_the_requested_local_steps():
    plan = FaultPlan.parse("nonfinite_loss@3+2, nonfinite_grads@10+1")
    assert [step for step in range(15) if plan.active("nonfinite_loss", step)] == [3, 4]
    assert [step for step in range(15) if plan.active("nonfinite_grads", step)] == [10]
    assert not FaultPlan.parse("").windows


def test_every_kind_is_registered_with_its_step_counter():
    assert {"nonfinite_loss", "nonfinite_grads"} <= set(KINDS)
    assert all(kind.keyed_by in (LOCAL_STEP, GLOBAL_STEP) and kind.help for kind in KINDS.values())
    assert KINDS["nonfinite_loss"].keyed_by == KINDS["nonfinite_grads"].keyed_by == LOCAL_STEP


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
    with pytest.raises(UserError, match="--faults"):
        FaultPlan.parse(spec)


class FakeSwarmOptimizer:
    """What CollaborativeTrainer.local_step touches of a SwarmOptimizer; records the gradients it was given."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.local_epoch = self.state_downloads = self.discarded_accumulations = 0
        self.scheduled_grads = None
        self.finite_grads_at_step: list[bool] = []

    def step(self, batch_size: int) -> None:
        self.finite_grads_at_step.append(all(torch.isfinite(p.grad).all().item() for p in self.model.parameters()))
        self.model.zero_grad()

    def load_state_from_peers(self) -> None:
        pass


@pytest.fixture
def restore_trainer(monkeypatch):
    """install() patches CollaborativeTrainer for the whole process: undo it after the test."""
    monkeypatch.setattr(CollaborativeTrainer, "__init__", CollaborativeTrainer.__init__)
    monkeypatch.setattr(faults, "_trainer_patches", [])


def make_trainer() -> tuple[CollaborativeTrainer, FakeSwarmOptimizer]:
    model = torch.nn.Linear(2, 1)
    opt = FakeSwarmOptimizer(model)
    args = TrainingArguments(per_device_train_batch_size=2, device="cpu")
    batches = iter(lambda: dict(x=torch.ones(2, 2)), None)
    trainer = CollaborativeTrainer(model, opt, batches, args, torch.device("cpu"),
                                   compute_loss=lambda m, batch: m(batch["x"]).pow(2).mean())
    return trainer, opt


def test_install_corrupts_the_trainer_on_the_chosen_local_steps_only(restore_trainer, caplog):
    with caplog.at_level(logging.WARNING, logger="collab.lab.faults"):
        install(FaultPlan.parse("nonfinite_loss@2+2,nonfinite_grads@5+1"))
    assert "misbehaves on purpose" in caplog.text and "nonfinite_loss@2+2" in caplog.text
    trainer, opt = make_trainer()
    losses = [trainer.local_step() for _ in range(6)]  # local steps 1..6
    assert [loss is None for loss in losses] == [False, True, True, False, False, False]
    assert trainer.nonfinite_total == 2 * trainer.args.gradient_accumulation_steps
    assert opt.finite_grads_at_step == [True, True, False, True]  # optimizer steps of local steps 1, 4, 5, 6


def test_without_install_the_trainer_has_no_faults():
    trainer, opt = make_trainer()
    assert all(trainer.local_step() is not None for _ in range(6))
    assert opt.finite_grads_at_step == [True] * 6


def run_launcher(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collab.lab.with_faults", *argv], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_launcher_rejects_a_bad_spec_in_one_line(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    result = run_launcher("--faults", "bad", str(script), "--flag")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --faults: ") and len(result.stderr.strip().splitlines()) == 1


def test_launcher_runs_the_script_as_main_with_its_own_arguments(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text("import json, sys\n"
                      "from collab.training import CollaborativeTrainer\n"
                      "patched = CollaborativeTrainer.__init__.__module__ == 'collab.lab.faults'\n"
                      "print(json.dumps(dict(name=__name__, argv=sys.argv, patched=patched)))\n")
    result = run_launcher("--faults", "nonfinite_loss@3+1", str(script), "--max_steps", "5", "-h")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == dict(name="__main__", argv=[str(script), "--max_steps",
                                                                                      "5", "-h"], patched=True)
    assert "Fault injection is on (--faults nonfinite_loss@3+1): this peer misbehaves on purpose" in result.stderr
