#!/usr/bin/env python3
"""Demo: a whole ALBERT collaboration on this machine, on CPU, offline, in a few minutes.

Builds a small pretraining set from the built-in corpus, then starts a coordinator, an auxiliary peer and
trainers as separate processes (the same scripts you would run on real machines, with albert/configs/demo.json),
shows the swarm's progress, and ends with a summary. Ctrl-C stops every process.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.lab import demo
from collab.lab.swarm import REPO_ROOT

logger = logging.getLogger(__name__)


@dataclass
class DemoArguments(demo.DemoArguments):
    """The kit's demo flags (collab/lab/demo.py); the ALBERT demo writes to outputs/demo."""

    output_dir: str = field(default="outputs/demo", metadata=dict(help="Where data, logs and checkpoints go."))


def prepare_data(data_dir: Path) -> None:
    if (data_dir / "tokenizer").is_dir():
        logger.info(f"Using the demo dataset in {data_dir}")
        return
    logger.info("Building the demo dataset from the built-in corpus (tokenizer training + SOP instances)")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "albert/tokenize_wikitext103.py"), "--builtin_corpus",
         "--tokenizer_name", "none", "--vocab_size", "4000", "--max_seq_length", "128",
         "--output_path", str(data_dir), "--overwrite_output_dir"],
        check=True,
    )


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    (args,) = parse_arguments((DemoArguments,), argv, description=__doc__)
    data_dir = Path(args.output_dir).resolve() / "data"
    prepare_data(data_dir)
    demo.run_demo(demo.TrackDemo(
        first_peer_script="albert/run_first_peer.py", trainer_script="albert/run_trainer.py",
        aux_script="albert/run_aux.py", config="albert/configs/demo.json",
        peer_args=["--dataset_path", str(data_dir)],  # every ALBERT script reads the tokenizer from there
    ), args)


if __name__ == "__main__":
    run_main(main)
