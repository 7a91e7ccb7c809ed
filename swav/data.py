"""SwAV data: labelled image datasets (a folder, the offline digits demo, a hub dataset) and the batch collators.

Datasets only decode: each sample is a raw RGB uint8 image [3, H, W] with its class index. Everything random
happens in the collators, which run in the DataLoader's worker processes: `MultiCropCollator` makes SwAV's
multi-crop views for training, `EvalCollator` the resize + center crop of evaluation (swav/evaluate.py). An image
that cannot be decoded does not stop a run that may last days: the dataset warns, counts it and hands the
collator an `UnreadableImage`, which the collator drops from the batch.
"""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from collab.cli import RateLimitedLog, one_line
from collab.errors import UserError
from swav.arguments import SwavArguments

logger = logging.getLogger(__name__)

# torchvision's IMG_EXTENSIONS, compared case-insensitively (ImageNet's files end in .JPEG).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN_DIGITS = "builtin:digits"
DIGITS_SIZE = 32  # the 8x8 scans upscaled, so that ResNet's stride-32 trunk still sees a spatial map
DIGITS_PARTS = ("all", "train", "val")
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratios (torchvision's default, used by SwAV)
BLUR_SIGMA = (0.1, 2.0)  # SwAV's PILRandomGaussianBlur radius, which Pillow takes as the Gaussian's sigma
BLUR_MAX_KERNEL = 13  # covers +-3 sigma at sigma 2.0, as Pillow's blur does
MAX_COLOR_STRENGTH = 2.5  # the hue jitter 0.2 * strength must stay within torchvision's limit of 0.5
EVAL_CROP_FRACTION = 0.875  # evaluation resizes to size / 0.875 and center-crops size (ImageNet's 256 -> 224)
SOURCE_HINT = f"pass an image folder laid out as <folder>/<class>/<image>.jpg, or {BUILTIN_DIGITS} for the offline demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


# ---------------------------------------------------------------- datasets


@dataclass(frozen=True)
class UnreadableImage:
    """Returned by a dataset in place of an image it could not decode; collators drop it from the batch.

    It keeps its dataset so that a collator whose whole batch was unreadable can ask for the next readable image
    (see `LabelledImageDataset.next_readable`): the collator runs in the same process as the dataset, so this
    reference is never pickled.
    """

    dataset: "LabelledImageDataset"
    index: int


class LabelledImageDataset(torch.utils.data.Dataset):
    """Images with class indices. Subclasses decode one image in `_decode` and name it in `_name`.

    A decoding failure is logged once (then every 10th/100th time, with the running count), counted in `skipped`
    and answered with an `UnreadableImage`, never a traceback: a corrupt JPEG among 1.28 million should cost one
    sample, not a peer. The count is per process: each DataLoader worker counts the images it met.
    """

    classes: list[str]
    description: str

    def __init__(self) -> None:
        self._unreadable = RateLimitedLog(logger)

    def __len__(self) -> int:
        raise NotImplementedError

    def label(self, index: int) -> int:
        raise NotImplementedError

    def _decode(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def _name(self, index: int) -> str:
        return f"#{index}"

    @property
    def skipped(self) -> int:
        """Unreadable images met so far by this process."""
        return self._unreadable.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | UnreadableImage:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        try:
            return self._decode(index), self.label(index)
        except Exception as error:  # any decoder failure (truncated, not an image, bad header) means the same
            self._unreadable(f"Skipped an unreadable image {self._name(index)} ({type(error).__name__}: "
                             f"{one_line(str(error))[:200]})")
            return UnreadableImage(self, index)

    def next_readable(self, index: int) -> tuple[torch.Tensor, int]:
        """The first readable sample after `index` (wrapping around): a batch must never end up empty."""
        for offset in range(1, len(self) + 1):
            sample = self[(index + offset) % len(self)]
            if not isinstance(sample, UnreadableImage):
                return sample
        raise UserError(f"none of the {len(self)} images of {self.description} can be decoded; {SOURCE_HINT}")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB uint8 [3, H, W]; grayscale, CMYK and palette images are converted first, as torchvision's loader does."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)  # a copy: torch warns about read-only buffers
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _is_image_file(name: str) -> bool:
    # Hidden files are skipped: macOS leaves "._name.JPEG" metadata files next to images when copying folders.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[str]:
    """Image files below `folder` (any depth, like torchvision's ImageFolder), relative to it, sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        relative = Path(directory).relative_to(folder)
        found += [str(relative / name) for name in sorted(files) if _is_image_file(name)]
    return found


class ImageFolderDataset(LabelledImageDataset):
    """A plain image folder, root/<class>/<image>, classes and images in sorted order (so every peer agrees).

    Paths are kept in one numpy bytes array rather than a list of Python strings: DataLoader workers fork, and a
    list of 1.28 million objects would be copied into each worker page by page as reference counts change.
    """

    def __init__(self, root: str | Path, argument: str = "the dataset path") -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            what = "is a file, not a folder" if self.root.exists() else "no such folder"
            raise UserError(f"{argument} {self.root}: {what}; {SOURCE_HINT}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        paths, labels = [], []
        for class_index, name in enumerate(self.classes):
            images = [f"{name}/{path}" for path in _images_under(self.root / name)]
            paths += images
            labels += [class_index] * len(images)
        if not paths:
            raise UserError(f"{argument} {self.root}: {self._why_empty()}; {SOURCE_HINT}")
        self._paths = np.array([path.encode() for path in paths], dtype=np.bytes_)
        self._labels = np.array(labels, dtype=np.int64)
        self.description = f"{self.root} ({len(paths)} images, {len(self.classes)} classes)"

    def _why_empty(self) -> str:
        loose = sum(1 for path in self.root.iterdir() if path.is_file() and _is_image_file(path.name))
        if loose:  # the raw ILSVRC val/ folder: 50,000 images without class folders
            return (f"its {loose} images are not in class subfolders (sort them into one folder per class first, "
                    f"e.g. ImageNet's val/ with valprep.sh)")
        return "no images in class subfolders" if self.classes else "the folder has no class subfolders"

    def __len__(self) -> int:
        return len(self._paths)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def path(self, index: int) -> Path:
        return self.root / self._paths[index].decode()

    def _name(self, index: int) -> str:
        return str(self.path(index))

    def _decode(self, index: int) -> torch.Tensor:
        with Image.open(self.path(index)) as image:
            return pil_to_tensor(image)


class DigitsDataset(LabelledImageDataset):
    """scikit-learn's handwritten digits (1,797 real 8x8 grayscale scans, 10 classes) as RGB uint8 images.

    The data ships inside the scikit-learn package, so the demo and the tests run offline; the scans are upscaled
    bilinearly to DIGITS_SIZE pixels (ink bright on dark, like MNIST) and held in memory. `part` "train" (3 of every
    4 scans) and "val" (every 4th) split them for evaluating a demo checkpoint; training uses "all".
    """

    def __init__(self, part: str = "all", size: int = DIGITS_SIZE) -> None:
        super().__init__()
        from sklearn.datasets import load_digits  # imported here: only the demo needs scikit-learn

        if part not in DIGITS_PARTS:
            raise ValueError(f"part must be one of {DIGITS_PARTS}, got {part!r}")
        digits = load_digits()
        every_fourth = torch.arange(len(digits.target)) % 4 == 0
        keep = {"all": torch.ones_like(every_fourth), "train": ~every_fourth, "val": every_fourth}[part]
        scans = torch.from_numpy(digits.images).float().unsqueeze(1)[keep] / 16.0  # values 0..16
        upscaled = F.interpolate(scans, size=(size, size), mode="bilinear", align_corners=False)
        self.images = (upscaled.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        self.labels = torch.from_numpy(digits.target).long()[keep]
        self.classes = [str(digit) for digit in range(10)]
        which = "" if part == "all" else f"{part} part: "
        self.description = f"{BUILTIN_DIGITS} ({which}{len(self.labels)} scikit-learn handwritten digits, {size} px)"

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def _decode(self, index: int) -> torch.Tensor:
        return self.images[index]


class HubImageDataset(LabelledImageDataset):
    """A Hugging Face image dataset (e.g. imagenet-1k): its first Image column, and its label column if any.

    Images are decoded here rather than by `datasets`, so that a corrupt one is skipped like in a folder.
    """

    def __init__(self, dataset: Any, name: str) -> None:
        super().__init__()
        import datasets

        features = dataset.features
        image_columns = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
        if not image_columns:
            raise UserError(f"hub dataset {name!r} has no image column (columns: {sorted(features)}); {SOURCE_HINT}")
        self._image_column = image_columns[0]
        labels = [column for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
        self.classes = list(features[labels[0]].names) if labels else ["unlabelled"]
        # Labels read once, as one Arrow column; images stay encoded and only their column is read per sample.
        self._labels = np.asarray(dataset[labels[0]], dtype=np.int64) if labels else np.zeros(len(dataset), np.int64)
        self._images = dataset.select_columns([self._image_column]).cast_column(
            self._image_column, datasets.Image(decode=False))
        self.description = f"hub dataset {name} ({len(dataset)} images, {len(self.classes)} classes)"

    def __len__(self) -> int:
        return len(self._labels)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def _name(self, index: int) -> str:
        return f"#{index} of {self.description}"

    def _decode(self, index: int) -> torch.Tensor:
        encoded = self._images[index][self._image_column]
        source = io.BytesIO(encoded["bytes"]) if encoded.get("bytes") else encoded["path"]
        with Image.open(source) as image:
            return pil_to_tensor(image)


def looks_like_hub_id(name: str) -> bool:
    """`name` or `owner/name` that is not a local path: a Hugging Face hub id rather than a folder."""
    return not Path(name).expanduser().exists() and bool(_HUB_ID.match(name))


def load_hub_image_dataset(name: str, argument: str = "the dataset path") -> HubImageDataset:
    """The train split of a hub dataset, downloaded in full rather than streamed: the collaboration's DataLoader
    shuffles a map-style dataset and needs its length. Offline (or without access), one UserError line."""
    import datasets

    from collab.hub import hub_offline_mode, hub_reachable

    where = f"{argument} {name!r}: no such local folder, and"
    if not hub_offline_mode() and not hub_reachable():  # offline mode may still find the datasets cache
        raise UserError(f"{where} the Hugging Face hub is unreachable to load it as a dataset; {SOURCE_HINT}")
    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # missing, gated, no cache offline: the same advice
        reason = f"{type(error).__name__}: {one_line(str(error))[:300]}"
        raise UserError(f"{where} it could not be loaded from the Hugging Face hub ({reason}); "
                        f"{SOURCE_HINT}") from error
    return HubImageDataset(dataset, name)


def load_image_dataset(path: str, argument: str = "--dataset_path") -> LabelledImageDataset:
    """The training images: a local folder, `builtin:digits` (offline demo) or a hub dataset id.

    A local folder wins over a hub id of the same spelling; a path that neither exists nor reads as a hub id
    (e.g. data/imagenet/train) is a missing folder, reported as such rather than as a failed download.
    """
    if path == BUILTIN_DIGITS:
        return DigitsDataset()
    if looks_like_hub_id(path):
        return load_hub_image_dataset(path, argument)
    return ImageFolderDataset(path, argument)


# ---------------------------------------------------------------- batching


def split_readable(samples: Iterable[Any]) -> tuple[list[tuple[torch.Tensor, int]], list[UnreadableImage]]:
    """(readable (image, label) pairs, unreadable markers); a bare image tensor gets label -1."""
    readable, unreadable = [], []
    for sample in samples:
        if isinstance(sample, UnreadableImage):
            unreadable.append(sample)
        elif isinstance(sample, torch.Tensor):
            readable.append((sample, -1))
        else:
            readable.append((sample[0], int(sample[1])))
    return readable, unreadable


def _as_float(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8 -> float in [0, 1] with a batch dimension of 1."""
    return image.unsqueeze(0).float().div_(255) if image.dtype == torch.uint8 else image.unsqueeze(0).float()


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear with antialiasing, like Pillow's resize in torchvision's transforms: crops of a 500 px ImageNet
    photo are shrunk up to 5x, which aliases without it. Clamped: the result feeds clamping colour ops."""
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def check_multi_crop_settings(size_crops: Sequence[int], nmb_crops: Sequence[int], min_scale_crops: Sequence[float],
                              max_scale_crops: Sequence[float], color_strength: float) -> None:
    """UserError for settings that would fail later or silently mean something else."""
    lengths = [len(size_crops), len(nmb_crops), len(min_scale_crops), len(max_scale_crops)]
    if len(set(lengths)) != 1 or not lengths[0]:
        raise UserError(f"--size_crops, --nmb_crops, --min_scale_crops and --max_scale_crops need one value per crop "
                        f"kind each; got {', '.join(map(str, lengths))} values")
    if not all(isinstance(size, int) and size > 0 for size in size_crops):
        raise UserError(f"--size_crops must be positive pixel counts, got {list(size_crops)}")
    if not all(isinstance(count, int) and count > 0 for count in nmb_crops):
        raise UserError(f"--nmb_crops must be positive counts, got {list(nmb_crops)}")
    if sum(nmb_crops) < 2:
        raise UserError(f"--nmb_crops {list(nmb_crops)}: SwAV predicts one crop's code from another, so it needs at "
                        f"least 2 crops in all")
    for low, high in zip(min_scale_crops, max_scale_crops):
        if not 0 < low <= high <= 1:  # written this way round so that nan is refused too
            raise UserError(f"crop scales must satisfy 0 < --min_scale_crops <= --max_scale_crops <= 1 (fractions of "
                            f"the image's area), got min {list(min_scale_crops)} and max {list(max_scale_crops)}")
    if not 0 <= color_strength <= MAX_COLOR_STRENGTH:
        raise UserError(f"--color_strength must be between 0 and {MAX_COLOR_STRENGTH} (hue jitter 0.2 x strength "
                        f"stays within 0.5), got {color_strength}")


def blur_kernel_size(crop_size: int) -> int:
    """BLUR_MAX_KERNEL, or less for tiny crops: reflection padding needs the kernel's radius below the crop size."""
    return min(BLUR_MAX_KERNEL, 2 * crop_size - 1)


def color_and_blur(crop_size: int, color_strength: float) -> torch.nn.Sequential:
    """SwAV's per-crop pipeline after the crop: flip, colour distortion, blur, ImageNet normalisation.

    As in the paper's code (main_swav.py): ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p=0.8, RandomGrayscale p=0.2,
    Gaussian blur p=0.5 with sigma in [0.1, 2.0]. kornia's ColorJitter uses torchvision's formulas; it draws the
    order of the four adjustments once per call (per crop kind and batch) rather than once per image.
    """
    strength = color_strength
    return torch.nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur(blur_kernel_size(crop_size), BLUR_SIGMA, p=0.5),
        K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)),
    )


class MultiCropCollator:
    """SwAV's multi-crop: returns {"crops": list of tensors [B, 3, size, size]}, nmb_crops[0] crops of
    size_crops[0] first, then nmb_crops[1] of size_crops[1], and so on.

    Images of a batch may differ in size (ImageNet), so each is cropped to its own random box first and resized to
    the crop size; flips, colour and blur then run on the whole batch of equally sized crops. Randomness comes
    from torch's global generator (kornia draws from it), so a batch is reproducible given torch's seed, also in
    DataLoader workers, which torch seeds from the loader's generator. A class, not a closure: workers unpickle it
    when they are spawned rather than forked.
    """

    def __init__(self, size_crops: Sequence[int], nmb_crops: Sequence[int], min_scale_crops: Sequence[float],
                 max_scale_crops: Sequence[float], color_strength: float = 1.0) -> None:
        check_multi_crop_settings(size_crops, nmb_crops, min_scale_crops, max_scale_crops, color_strength)
        self.size_crops, self.nmb_crops = list(size_crops), list(nmb_crops)
        # The crop module is used for its box sampler (torchvision's algorithm: 10 tries, then a central crop).
        self.croppers = [K.RandomResizedCrop((size, size), scale=(low, high), ratio=CROP_RATIO)
                         for size, low, high in zip(size_crops, min_scale_crops, max_scale_crops)]
        self.pipelines = [color_and_blur(size, color_strength) for size in size_crops]

    def __call__(self, samples: list) -> dict[str, list[torch.Tensor]]:
        images = [image for image, _ in readable_or_replacement(samples)]
        crops: list[torch.Tensor] = []
        with torch.no_grad():
            for size, count, cropper, pipeline in zip(self.size_crops, self.nmb_crops, self.croppers, self.pipelines):
                resized = torch.cat([self._random_resized_crops(images, cropper, size) for _ in range(count)])
                crops.extend(pipeline(resized).split(len(images)))
        return {"crops": crops}

    @staticmethod
    def _random_resized_crops(images: list[torch.Tensor], cropper: K.RandomResizedCrop, size: int) -> torch.Tensor:
        boxes = _sample_boxes(images, cropper)
        return torch.cat([_resize(_as_float(image[:, y0:y1, x0:x1]), size, size)
                          for image, (x0, y0, x1, y1) in zip(images, boxes)])


def _sample_boxes(images: list[torch.Tensor], cropper: K.RandomResizedCrop) -> list[tuple[int, int, int, int]]:
    """One random crop box (x0, y0, x1, y1), end exclusive, per image; one kornia call per distinct image size."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape[-2:]), []).append(index)
    boxes: list[Optional[tuple[int, int, int, int]]] = [None] * len(images)
    for (height, width), indices in by_shape.items():
        corners = cropper.forward_parameters(torch.Size((len(indices), 3, height, width)))["src"]
        for index, box in zip(indices, corners.round().long().tolist()):  # corners: top-left ... bottom-left
            (x0, y0), (x1, y1) = box[0], box[2]
            boxes[index] = (x0, y0, x1 + 1, y1 + 1)
    return boxes


def readable_or_replacement(samples: list) -> list[tuple[torch.Tensor, int]]:
    """The readable samples; when none is, the next readable image of the dataset, so training never gets an
    empty batch (which would give a NaN loss, and BatchNorm refuses)."""
    readable, unreadable = split_readable(samples)
    if not readable:
        if not unreadable:
            raise ValueError("cannot collate an empty batch")
        readable = [unreadable[0].dataset.next_readable(unreadable[0].index)]
    return readable


def make_collator(args: SwavArguments) -> MultiCropCollator:
    """Collator for the trainer's DataLoader; see MultiCropCollator."""
    return MultiCropCollator(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                             args.color_strength)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation view: shorter side to size / 0.875, then the central size x size square; float [1, 3, s, s]."""
    height, width = image.shape[-2:]
    short = round(size / EVAL_CROP_FRACTION)
    scale = short / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    resized = _resize(_as_float(image), new_height, new_width)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return resized[..., top:top + size, left:left + size]


class EvalCollator:
    """Deterministic evaluation batches: {"images": [B, 3, s, s] normalised, "labels": [B], "skipped": count}.

    Unreadable images are dropped and counted (an evaluation batch may even be empty: the caller skips it).
    """

    def __init__(self, image_size: int) -> None:
        if image_size <= 0:
            raise UserError(f"--image_size must be positive, got {image_size}")
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, samples: list) -> dict[str, Any]:
        readable, unreadable = split_readable(samples)
        if readable:
            images = torch.cat([resize_center_crop(image, self.image_size) for image, _ in readable])
        else:
            images = torch.empty(0, 3, self.image_size, self.image_size)
        labels = torch.tensor([label for _, label in readable], dtype=torch.long)
        return {"images": (images - self.mean) / self.std, "labels": labels, "skipped": len(unreadable)}
