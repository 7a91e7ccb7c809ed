"""Recipes for the chaos harness (collab/lab/chaos.py): how to run one track's swarm on this machine."""
from __future__ import annotations

from pathlib import Path

from collab.lab.chaos import Recipe
from collab.lab.swarm import REPO_ROOT


def albert_recipe(data_dir: Path, target_batch_size: int) -> Recipe:
    """The demo preset at the production compression (fp16): peers stay together by the value check and
    re-sync (collab.sync), not by a configuration that hides drift."""
    from transformers import AlbertForPreTraining

    common = ["--config", str(REPO_ROOT / "albert/configs/demo.json"), "--dataset_path", str(data_dir),
              "--run_id", "chaos", "--target_batch_size", str(target_batch_size),
              "--matchmaking_time", "3", "--averaging_timeout", "30", "--load_state_timeout", "30",
              "--total_steps", "1000",
              "--save_steps", "5", "--logging_steps", "50"]
    return Recipe(
        coordinator_script="albert/run_first_peer.py", trainer_script="albert/run_trainer.py",
        aux_script="albert/run_aux.py", common_args=common,
        incompatible_args=["--target_batch_size", str(2 * target_batch_size)],
        load_model=AlbertForPreTraining.from_pretrained,
    )
