#!/usr/bin/env python3
"""Demo: a whole SwAV collaboration on this machine, on CPU, offline, in a few minutes.

Trains the tiny ResNet preset on the built-in image set (scikit-learn's 8x8 digits, upscaled to 32 px): starts a
coordinator, an auxiliary peer and trainers as separate processes (the same scripts you would run on real
machines, with swav/configs/demo.json), shows the swarm's progress, and ends with a summary and the command
that evaluates the coordinator's checkpoint. Ctrl-C stops every process.
"""
from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.lab import demo
from collab.lab.swarm import REPO_ROOT
from swav.data import load_image_dataset

logger = logging.getLogger(__name__)


@dataclass
class DemoArguments(demo.DemoArguments):
    """The kit's demo flags (collab/lab/demo.py), plus the images to train on; the SwAV demo writes to
    outputs/demo-swav."""

    output_dir: str = field(default="outputs/demo-swav", metadata=dict(help="Where logs and checkpoints go."))
    dataset_path: str = field(default="builtin:digits", metadata=dict(
        help="The trainers' images: builtin:digits (offline), or an image folder (<folder>/<class>/<image>)."))


def prepare_data(dataset_path: str) -> None:
    """Nothing to build: load the images once here, so that a bad path is one line before any peer starts."""
    dataset = load_image_dataset(dataset_path)
    logger.info(f"Training on {len(dataset)} images from {dataset_path}")


def evaluation_hint(result: demo.DemoResult) -> list[str]:
    """How to evaluate the coordinator's checkpoint (the digits have no labelled train/val folders to run it on)."""
    if result.coordinator_checkpoint is None:
        return []
    checkpoint = Path(result.coordinator_checkpoint)
    try:
        checkpoint = checkpoint.relative_to(REPO_ROOT)
    except ValueError:
        pass
    command = ["python", "swav/evaluate.py", "--checkpoint", str(checkpoint), "--image_size", "32",
               "--train_dir", "IMAGES/train", "--val_dir", "IMAGES/val"]
    return [
        "",
        "Evaluate the coordinator's checkpoint (k-NN and linear probe on frozen features) on a labelled image folder",
        "(IMAGES/train and IMAGES/val with one subfolder per class, e.g. a subset of ImageNet or Tiny ImageNet):",
        f"  {shlex.join(command)}",
    ]


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    (args,) = parse_arguments((DemoArguments,), argv, description=__doc__)
    prepare_data(args.dataset_path)
    demo.run_demo(demo.TrackDemo(
        first_peer_script="swav/run_first_peer.py", trainer_script="swav/run_trainer.py",
        aux_script="swav/run_aux.py", config="swav/configs/demo.json",
        trainer_args=["--dataset_path", args.dataset_path],  # only trainers read images
        epilogue=evaluation_hint,
    ), args)


if __name__ == "__main__":
    run_main(main)
