"""ALBERT-specific arguments; the collaboration groups come from collab.arguments."""
from __future__ import annotations

from dataclasses import dataclass, field

from collab.arguments import (
    AveragerArguments,
    CollaborationArguments,
    PeerArguments,
    ProgressTrackerArguments,
    TrainingArguments,
)
from collab.monitor import MonitorArguments


@dataclass
class AlbertArguments:
    """Model and data of the ALBERT track."""

    model_preset: str = field(
        default="albert-large", metadata=dict(help="albert-large (the paper's model) or albert-tiny (CPU demo/tests).")
    )
    dataset_path: str = field(
        default="data/albert_tokenized_wikitext",
        metadata=dict(help="Output of albert/tokenize_wikitext103.py (dataset + tokenizer)."),
    )
    mlm_probability: float = field(default=0.15, metadata=dict(help="Fraction of tokens masked for MLM."))


# Every ALBERT script parses the same groups, so one --config preset serves the coordinator, trainers and aux peers.
ARGUMENT_GROUPS = (
    AlbertArguments, PeerArguments, CollaborationArguments, AveragerArguments, ProgressTrackerArguments,
    TrainingArguments,
)
# The coordinator also parses these; a preset may set them (albert-large.json does), and the other scripts ignore them.
COORDINATOR_GROUPS = (MonitorArguments,)
