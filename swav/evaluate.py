#!/usr/bin/env python3
"""Evaluate a SwAV checkpoint's trunk on a labelled image set: k-NN and linear-probe top-1 on frozen features.

Features are the pooled trunk output (`SwavModel.features`) of each image resized to --image_size / 0.875 and
center-cropped to --image_size. The k-NN classifier (cosine similarity, --knn_k neighbours, votes weighted by
exp(similarity / --knn_temperature), as in InstDisc and DINO) needs no training; the linear probe trains one linear
layer on the frozen, standardised train features. Both use --train_dir for training and report top-1 on --val_dir.
These fast probes on pre-extracted features (no augmentation) land below the paper's linear evaluation protocol
(100 epochs of a linear layer on augmented crops, 75.3% for SwAV ResNet-50), but they rank checkpoints the same way.

Examples:
    python swav/evaluate.py --checkpoint outputs/trainer/checkpoints --train_dir data/imagenet/train \\
        --val_dir data/imagenet/val --max_train_images 100000
    python swav/evaluate.py --random_init --model_preset resnet-tiny --image_size 64 \\
        --train_dir ../shared/data/images/tiny-imagenet-200-subset/train \\
        --val_dir ../shared/data/images/tiny-imagenet-200-subset/val
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from collab.arguments import parse_arguments
from collab.checkpoints import (
    MANIFEST,
    CorruptCheckpointError,
    checkpoint_step,
    latest_valid_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from collab.cli import one_line, run_main, setup_logging
from collab.errors import UserError
from collab.training import resolve_device, set_seed
from swav.arguments import SwavArguments
from swav.data import (
    BUILTIN_DIGITS,
    DigitsDataset,
    EvalCollator,
    ImageFolderDataset,
    LabelledImageDataset,
    looks_like_hub_id,
)
from swav.model import SwavConfig, SwavModel, build_model, model_config

logger = logging.getLogger(__name__)

LINEAR_BATCH_SIZE = 256
LINEAR_MOMENTUM = 0.9
KNN_CHUNK = 256  # validation images compared with every train feature at once (memory: chunk x train images)
MODEL_HINT = "pass a checkpoint folder (.../checkpoints/step-N), a folder of them, a hub model id, or --random_init"


def _help(text: str) -> dict:
    return dict(help=text)


@dataclass
class EvaluationArguments:
    """What to evaluate, on which images, and how."""

    checkpoint: Optional[str] = field(default=None, metadata=_help(
        "A checkpoint folder (.../checkpoints/step-N), a folder of checkpoints or a run's output folder (the newest "
        "one that passes verification is taken), a folder written by save_pretrained, or a Hugging Face hub id."))
    random_init: bool = field(default=False, metadata=_help(
        "Evaluate the --model_preset network at random initialisation (seeded by --seed) instead of a checkpoint: "
        "the baseline a trained trunk must beat."))
    model_preset: str = field(default="resnet50", metadata=_help(
        "With --random_init: resnet50 or resnet-tiny. A checkpoint brings its own architecture."))
    seed: int = field(default=0, metadata=_help("Seed of --random_init, of the image subsets and of the linear probe."))
    train_dir: str = field(default="data/imagenet/train", metadata=_help(
        "Labelled images the classifiers learn from: one subfolder of images per class (ImageNet's train/); "
        "builtin:digits (with --val_dir builtin:digits) for the offline demo's images, split 3:1 into train/val."))
    val_dir: str = field(default="data/imagenet/val", metadata=_help(
        "Labelled images the top-1 is measured on, with the same class subfolders (ImageNet's val/ sorted into "
        "class folders, e.g. with valprep.sh)."))
    image_size: int = field(default=224, metadata=_help(
        "Side of the center crop, px; images are first resized so that their shorter side is image_size / 0.875."))
    batch_size: int = field(default=128, metadata=_help("Images per forward pass when extracting features."))
    num_workers: int = field(default=4, metadata=_help("DataLoader worker processes that decode and resize images."))
    knn_k: int = field(default=20, metadata=_help("Neighbours that vote in the k-NN classifier."))
    knn_temperature: float = field(default=0.07, metadata=_help(
        "Each neighbour's vote is exp(cosine similarity / T) (InstDisc, DINO): a low T trusts the closest ones more."))
    linear_epochs: int = field(default=100, metadata=_help("Epochs of the linear probe over the train features."))
    linear_lr: float = field(default=0.1, metadata=_help(
        "Initial learning rate of the linear probe (SGD, momentum 0.9, batch 256, cosine decay to 0)."))
    device: str = field(default="auto", metadata=_help("cpu, cuda, cuda:N, or auto (cuda if available)."))
    max_train_images: int = field(default=0, metadata=_help(
        "Use a random subset of this many train images (seeded by --seed); 0: all of them."))
    max_val_images: int = field(default=0, metadata=_help(
        "Use a random subset of this many validation images (seeded by --seed); 0: all of them."))
    output_json: Optional[str] = field(default=None, metadata=_help("Also write the results to this JSON file."))

    def __post_init__(self) -> None:
        if bool(self.checkpoint) == self.random_init:
            raise UserError("pass either --checkpoint (a checkpoint folder or hub id) or --random_init, not "
                            f"{'both' if self.random_init else 'neither'}")
        for name in ("image_size", "batch_size", "knn_k", "knn_temperature", "linear_epochs", "linear_lr"):
            if not getattr(self, name) > 0:  # written this way round so that nan is refused too
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("num_workers", "max_train_images", "max_val_images"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be 0 or more, got {getattr(self, name)}")


# ---------------------------------------------------------------- the model


def resolve_checkpoint(name: str) -> Optional[Path]:
    """The folder to load for --checkpoint `name`, or None when `name` is a hub id; UserError when there is none."""
    path = Path(name).expanduser()
    if not path.is_dir():
        if path.exists():
            raise UserError(f"--checkpoint {path} is a file; {MODEL_HINT}")
        if looks_like_hub_id(name):
            return None
        raise UserError(f"--checkpoint {path}: no such folder; {MODEL_HINT}")
    if (path / MANIFEST).is_file():  # one step-N folder
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as error:
            raise UserError(f"--checkpoint {error}; pass another checkpoint") from None
        return path
    for root in (path, path / "checkpoints"):  # a checkpoints folder, or the run's output folder above it
        if list_checkpoints(root):
            newest = latest_valid_checkpoint(root)
            if newest is None:
                raise UserError(f"--checkpoint {root}: none of its checkpoints passes verification (all torn or "
                                f"corrupted); {MODEL_HINT}")
            return newest
    if (path / "config.json").is_file():  # save_pretrained output without a manifest (e.g. a hub download)
        return path
    raise UserError(f"--checkpoint {path}: no checkpoint in this folder (neither step-N folders nor config.json); "
                    f"{MODEL_HINT}")


def _check_model_type(folder: Path) -> None:
    """transformers would load another model type's folder with only a warning, into random weights."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--checkpoint {folder}: unreadable config.json ({error}); {MODEL_HINT}") from None
    if model_type != SwavConfig.model_type:
        raise UserError(f"--checkpoint {folder} holds a {model_type!r} model, not a SwAV one; {MODEL_HINT}")


def _describe_checkpoint(folder: Path) -> str:
    """'step-30 of run swav-imagenet (path)': the step and run id saved with a collaborative checkpoint."""
    if not folder.name.startswith("step-"):
        return f"model in {folder}"
    try:
        run_id = json.loads((folder / "arguments.json").read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        run_id = None
    run = f" of run {run_id}" if run_id else ""
    return f"step-{checkpoint_step(folder)}{run} ({folder})"


def _load_hub_model(model_id: str) -> SwavModel:
    """A model from the hub, or from the local hub cache when the hub is unreachable (the client would retry ~1 min)."""
    from collab.hub import hub_reachable

    online = hub_reachable()
    try:
        return SwavModel.from_pretrained(model_id, local_files_only=not online)
    except (OSError, ValueError) as error:
        reason = one_line(str(error))[:300] if online else "the Hugging Face hub is unreachable and it is not cached"
        raise UserError(f"--checkpoint {model_id!r}: no such local folder, and no SwAV model by that id could be "
                        f"loaded from the hub ({reason}); {MODEL_HINT}") from error


def load_model_for_evaluation(checkpoint: Optional[str], random_init: bool = False, model_preset: str = "resnet50",
                              seed: int = 0) -> tuple[SwavModel, str]:
    """(model in eval mode, a description for the result line) for --checkpoint or --random_init.

    A random-init model has the same trunk and the default head of the training arguments; the head does not
    matter here, only the trunk's features are evaluated.
    """
    if random_init:
        set_seed(seed)
        defaults = SwavArguments()
        config = model_config(model_preset, defaults.hidden_dim, defaults.feature_dim, defaults.num_prototypes)
        return build_model(config).eval(), f"random init of {model_preset} (seed {seed})"
    if not checkpoint:
        raise UserError(f"no model to evaluate; {MODEL_HINT}")
    folder = resolve_checkpoint(checkpoint)
    if folder is None:
        return _load_hub_model(checkpoint).eval(), f"hub model {checkpoint}"
    _check_model_type(folder)
    return SwavModel.from_pretrained(folder).eval(), _describe_checkpoint(folder)


# ---------------------------------------------------------------- features


def subset(dataset: LabelledImageDataset, max_images: int, seed: int) -> torch.utils.data.Dataset:
    """A random subset of `max_images` (0: all). Random, not the first ones: folders are sorted by class."""
    if not 0 < max_images < len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:max_images].sort().values
    return torch.utils.data.Subset(dataset, indices.tolist())


@torch.no_grad()
def extract_features(model: SwavModel, dataset: torch.utils.data.Dataset, image_size: int, batch_size: int = 128,
                     device: str | torch.device = "cpu", num_workers: int = 0,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, trunk_dim] float32 on the CPU, labels [N]) of every readable image, in dataset order.

    The model runs in eval mode (BatchNorm uses its running statistics); unreadable images are left out and their
    number logged once at the end.
    """
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=EvalCollator(image_size))
    features, labels, skipped = [], [], 0
    for batch in tqdm(loader, desc=desc, unit="batch"):
        skipped += batch["skipped"]
        if len(batch["labels"]):
            features.append(model.features(batch["images"].to(device)).float().cpu())
            labels.append(batch["labels"])
    if skipped:
        logger.warning(f"{desc}: left out {skipped} unreadable image(s)")
    if not features:
        raise UserError(f"{desc}: none of the {len(dataset)} images could be decoded")
    return torch.cat(features), torch.cat(labels)


# ---------------------------------------------------------------- classifiers


def _num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(label.max()) for label in labels)) + 1


@torch.no_grad()
def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07,
             device: str | torch.device = "cpu") -> float:
    """Top-1 (%) of weighted k-NN voting on cosine similarity, as in InstDisc (Wu et al. 2018) and DINO.

    Each test image takes its k most similar train images; each votes for its class with weight
    exp(similarity / temperature), and the class with the largest sum wins. Test images are compared in chunks
    so that memory stays at chunk x train images.
    """
    device = torch.device(device)
    train = F.normalize(train_features.to(device).float(), dim=1)
    train_labels = train_labels.to(device)
    num_classes, k = _num_classes(train_labels, test_labels), min(k, len(train_labels))
    correct = 0
    for start in range(0, len(test_features), KNN_CHUNK):
        test = F.normalize(test_features[start:start + KNN_CHUNK].to(device).float(), dim=1)
        similarities, neighbours = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(test), num_classes, device=device)
        votes.scatter_add_(1, train_labels[neighbours], (similarities / temperature).exp())
        correct += int((votes.argmax(1).cpu() == test_labels[start:start + KNN_CHUNK]).sum())
    return 100.0 * correct / len(test_labels)


def linear_probe_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, epochs: int = 100, lr: float = 0.1, seed: int = 0,
                      device: str | torch.device = "cpu") -> float:
    """Top-1 (%) of a linear classifier trained on the frozen features (cross-entropy, SGD with momentum).

    Written in torch rather than with scikit-learn: ImageNet's 1.28 million x 2048 features and 1000 classes are
    minutes of mini-batch SGD on the evaluation's GPU, but hours for scikit-learn's full-batch solvers on a CPU.
    Features are standardised with the train set's mean and std (BatchNorm without affine, as in MAE's probe),
    which makes one learning rate fit every trunk; the weights start at zero, so the result depends only on
    `seed` through the order of the mini-batches.
    """
    device = torch.device(device)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    train = ((train_features - mean) / std).to(device)
    test = ((test_features - mean) / std).to(device)
    train_labels = train_labels.to(device)
    classifier = torch.nn.Linear(train.shape[1], _num_classes(train_labels, test_labels)).to(device)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=LINEAR_MOMENTUM)
    steps_per_epoch = math.ceil(len(train) / LINEAR_BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch"):
        for batch in torch.randperm(len(train), generator=generator).to(device).split(LINEAR_BATCH_SIZE):
            loss = F.cross_entropy(classifier(train[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        predictions = classifier(test).argmax(1).cpu()
    return 100.0 * float((predictions == test_labels).float().mean())


# ---------------------------------------------------------------- the script


def _labelled_images(path: str, argument: str, digits_part: str) -> LabelledImageDataset:
    return DigitsDataset(digits_part) if path == BUILTIN_DIGITS else ImageFolderDataset(path, argument)


def load_labelled_images(args: EvaluationArguments) -> tuple[LabelledImageDataset, LabelledImageDataset]:
    """The train and validation images; UserError unless both exist, hold images and name the same classes.

    `builtin:digits` for both gives the offline demo's images, split 3:1 into train and val parts.
    """
    train = _labelled_images(args.train_dir, "--train_dir", "train")
    val = _labelled_images(args.val_dir, "--val_dir", "val")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserError(f"--train_dir and --val_dir must have the same class folders; only in train: "
                        f"{only_train[:5]}, only in val: {only_val[:5]}")
    return train, val


def result_line(results: dict) -> str:
    return (f"k-NN top-1 {results['knn_top1']:.1f}% | linear top-1 {results['linear_top1']:.1f}% | "
            f"{results['model']} | {results['train_images']} train / {results['val_images']} val images")


def evaluate(args: EvaluationArguments) -> dict:
    """Load the images and the model, extract features, run both classifiers; returns the results."""
    started = time.monotonic()
    device = resolve_device(args.device)
    train, val = load_labelled_images(args)  # before the model: a wrong folder is reported in seconds
    model, description = load_model_for_evaluation(args.checkpoint, args.random_init, args.model_preset, args.seed)
    logger.info(f"Evaluating {description} on {train.description} and {val.description}")
    extract = dict(image_size=args.image_size, batch_size=args.batch_size, device=device, num_workers=args.num_workers)
    train_features, train_labels = extract_features(model, subset(train, args.max_train_images, args.seed),
                                                    desc="train features", **extract)
    val_features, val_labels = extract_features(model, subset(val, args.max_val_images, args.seed),
                                                desc="val features", **extract)
    knn = knn_top1(train_features, train_labels, val_features, val_labels, args.knn_k, args.knn_temperature, device)
    linear = linear_probe_top1(train_features, train_labels, val_features, val_labels, args.linear_epochs,
                               args.linear_lr, args.seed, device)
    return dict(knn_top1=knn, linear_top1=linear, model=description, train_images=len(train_labels),
                val_images=len(val_labels), num_classes=len(train.classes), feature_dim=train_features.shape[1],
                seconds=round(time.monotonic() - started, 1), arguments=asdict(args))


def main(argv: Optional[list[str]] = None) -> dict:
    setup_logging()
    (args,) = parse_arguments([EvaluationArguments], argv, description=__doc__.split("\n\n")[0])
    results = evaluate(args)
    if args.output_json:
        output = Path(args.output_json)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(result_line(results), flush=True)
    return results


if __name__ == "__main__":
    run_main(main)
