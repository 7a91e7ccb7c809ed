"""SwAV-specific arguments; the collaboration groups come from collab.arguments.

The defaults are the paper's recipe (SwAV ResNet-50, multi-crop 2x224 + 6x96, 3000 prototypes, LARS);
`configs/swav-resnet50.json` states them again for the record, `configs/cpu.json` is the small CPU preset.
"""
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


def _help(text: str) -> dict:
    return dict(help=text)


@dataclass
class SwavArguments:
    """Model, multi-crop data, SwAV loss and LARS of the SwAV track."""

    model_preset: str = field(
        default="resnet50", metadata=_help("resnet50 (the paper's trunk) or resnet-tiny (CPU demo and tests).")
    )
    dataset_path: str = field(
        default="data/imagenet/train",
        metadata=_help("An image folder: one subfolder of images per class (ImageNet's train/), labels unused."),
    )
    # multi-crop
    size_crops: list[int] = field(default_factory=lambda: [224, 96], metadata=_help("Side of each crop kind, px."))
    nmb_crops: list[int] = field(default_factory=lambda: [2, 6], metadata=_help("How many crops of each kind."))
    min_scale_crops: list[float] = field(
        default_factory=lambda: [0.14, 0.05], metadata=_help("Smallest area fraction of each crop kind.")
    )
    max_scale_crops: list[float] = field(
        default_factory=lambda: [1.0, 0.14], metadata=_help("Largest area fraction of each crop kind.")
    )
    color_strength: float = field(default=1.0, metadata=_help("Strength of the colour distortion."))
    # head and loss
    hidden_dim: int = field(default=2048, metadata=_help("Hidden width of the projection MLP."))
    feature_dim: int = field(default=128, metadata=_help("Output width of the projection (L2-normalised)."))
    num_prototypes: int = field(default=3000, metadata=_help("Number of prototypes (clusters)."))
    temperature: float = field(default=0.1, metadata=_help("Softmax temperature of the swapped prediction."))
    epsilon: float = field(default=0.03, metadata=_help("Entropy regularisation of Sinkhorn-Knopp."))
    sinkhorn_iterations: int = field(default=3, metadata=_help("Sinkhorn-Knopp iterations."))
    crops_for_assign: list[int] = field(
        default_factory=lambda: [0, 1], metadata=_help("Crops whose codes are computed (the large ones).")
    )
    queue_length: int = field(
        default=3840, metadata=_help("Embeddings kept per assigned crop to stabilise small batches (0: no queue).")
    )
    queue_start_step: int = field(
        default=150,
        metadata=_help("Global step from which the queue is used (the paper's code compared the epoch count with "
                       "this value; in a collaboration every peer compares the global step)."),
    )
    freeze_prototypes_steps: int = field(
        default=313, metadata=_help("Global steps during which the prototypes are not updated.")
    )
    # optimizer
    momentum: float = field(default=0.9, metadata=_help("SGD momentum."))
    lars_trust_coefficient: float = field(default=0.001, metadata=_help("LARS trust coefficient (eta)."))
    warmup_start_lr: float = field(default=0.3, metadata=_help("Learning rate at global step 0 (linear warm-up)."))
    final_lr: float = field(default=0.0048, metadata=_help("Learning rate at --total_steps (cosine decay)."))


# Every SwAV script parses the same groups, so one --config preset serves the coordinator, trainers and aux peers.
ARGUMENT_GROUPS = (
    SwavArguments, PeerArguments, CollaborationArguments, AveragerArguments, ProgressTrackerArguments,
    TrainingArguments,
)
COORDINATOR_GROUPS = (MonitorArguments,)
