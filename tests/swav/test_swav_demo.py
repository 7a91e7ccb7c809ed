"""The SwAV demo (swav/run_demo.py through collab/lab/demo.py): its preset, and a short run end to end."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from collab.arguments import parse_arguments
from collab.lab.swarm import REPO_ROOT
from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS

CONFIG = str(REPO_ROOT / "swav/configs/demo.json")


def test_demo_preset_is_accepted_by_every_script():
    """The coordinator reads every group; trainers and aux peers skip the coordinator's keys of the shared preset."""
    *_, training, monitor = parse_arguments(ARGUMENT_GROUPS + COORDINATOR_GROUPS, ["--config", CONFIG])
    swav, peer, collab, *_ = parse_arguments(ARGUMENT_GROUPS, ["--config", CONFIG],
                                             preset_shared_with=COORDINATOR_GROUPS)
    assert swav.dataset_path == "builtin:digits" and swav.model_preset == "resnet-tiny"
    assert peer.host_maddrs == ["/ip4/127.0.0.1/tcp/0"]
    assert collab.target_batch_size % training.per_device_train_batch_size == 0
    assert monitor.save_checkpoint_step_interval > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_and_prints_the_evaluation_command(tmp_path):
    max_steps = 6
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "swav/run_demo.py"), "--output_dir", str(tmp_path),
         "--max_steps", str(max_steps), "--timeout", "480"],
        capture_output=True, text=True, timeout=560, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Demo summary" in out
    assert re.search(rf"global steps recorded : {max_steps}\b", out), out
    averaged = re.search(r"steps averaged by >= 2 trainers: (\d+) of (\d+)", out)
    assert averaged is not None and int(averaged.group(1)) >= 1, out  # the trainers did train together
    command = re.search(r"python swav/evaluate\.py --checkpoint (\S+) ", out)
    assert command is not None, out
    checkpoint = Path(command.group(1))
    checkpoint = checkpoint if checkpoint.is_absolute() else REPO_ROOT / checkpoint
    assert checkpoint.is_dir() and checkpoint.parent == tmp_path / "coordinator/checkpoints"
