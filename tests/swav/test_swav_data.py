"""Tests of the SwAV data: image folders, the offline digits set, unreadable images and the multi-crop collator."""
from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collab.errors import UserError
from collab.training import to_device
from swav.arguments import SwavArguments
from swav.data import (
    BUILTIN_DIGITS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DigitsDataset,
    EvalCollator,
    HubImageDataset,
    ImageFolderDataset,
    MultiCropCollator,
    UnreadableImage,
    load_image_dataset,
    make_collator,
)

SMALL_CROPS = dict(size_crops=[32, 16], nmb_crops=[2, 3], min_scale_crops=[0.3, 0.1], max_scale_crops=[1.0, 0.3])
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> DigitsDataset:
    return DigitsDataset()


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator), index % 3)
            for index, (height, width) in enumerate(sizes)]


def collator(**overrides) -> MultiCropCollator:
    return make_collator(SwavArguments(**{**SMALL_CROPS, **overrides}))


def write_png(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# ---------------------------------------------------------------- the multi-crop collator


def test_collator_returns_every_crop_in_order_with_its_size_from_images_of_different_sizes():
    images = random_images([(40, 60), (64, 64), (80, 50), (33, 33)])
    crops = collator()(images)["crops"]
    assert [tuple(crop.shape) for crop in crops] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(crop.dtype == torch.float32 and torch.isfinite(crop).all() for crop in crops)
    assert not torch.equal(crops[0], crops[1])  # two independent views, not one view twice
    moved = to_device(crops, torch.device("cpu"))  # what the training loop does with every batch value
    assert [tuple(crop.shape) for crop in moved] == [tuple(crop.shape) for crop in crops]


def test_collator_normalises_with_imagenet_mean_and_std():
    gray = torch.full((3, 48, 48), 128, dtype=torch.uint8)  # unchanged by crop, flip, blur and greyscale
    crops = collator(color_strength=0.0)([(gray, 0)] * 4)["crops"]
    expected = (128 / 255 - MEAN) / STD
    for crop in crops:
        assert torch.allclose(crop, expected.expand_as(crop), atol=1e-4)
    # full colour distortion: every value stays within the normalised image of [0, 1]
    crops = collator()(random_images([(48, 48)] * 8))["crops"]
    for crop in crops:
        assert ((crop >= (0 - MEAN) / STD - 1e-4) & (crop <= (1 - MEAN) / STD + 1e-4)).all()


def test_colour_distortion_turns_about_one_crop_in_five_to_greyscale():
    torch.manual_seed(0)
    colourful = [(torch.stack([torch.full((24, 24), value) for value in (250, 30, 120)]).to(torch.uint8), 0)] * 200
    crop = collator(size_crops=[16, 16], nmb_crops=[1, 1], min_scale_crops=[0.5, 0.5],
                    max_scale_crops=[1.0, 1.0])(colourful)["crops"][0]
    pixels = crop * STD + MEAN
    grey = (pixels.amax(1) - pixels.amin(1)).flatten(1).amax(1) < 1e-3
    assert 0.1 < grey.float().mean() < 0.3  # RandomGrayscale p=0.2 over 200 crops


def test_same_torch_seed_gives_the_same_crops_and_another_seed_other_crops():
    images, make = random_images([(40, 60), (64, 64), (50, 70)]), collator()
    torch.manual_seed(7)
    first = make(images)["crops"]
    torch.manual_seed(7)
    again = make(images)["crops"]
    torch.manual_seed(8)
    other = make(images)["crops"]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_collator_is_picklable_and_deterministic_in_dataloader_workers(digits):
    make = pickle.loads(pickle.dumps(collator()))  # what a spawned worker receives
    subset = torch.utils.data.Subset(digits, range(16))

    def first_batches() -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(subset, batch_size=8, shuffle=True, num_workers=2, collate_fn=make,
                                             generator=torch.Generator().manual_seed(3))
        return [crop for batch in loader for crop in batch["crops"]]

    crops = first_batches()
    assert [tuple(crop.shape) for crop in crops] == ([(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3) * 2
    assert all(torch.equal(a, b) for a, b in zip(crops, first_batches()))


@pytest.mark.parametrize("overrides, message", [
    (dict(nmb_crops=[2]), "one value per crop kind"),
    (dict(min_scale_crops=[0.3, 0.1, 0.1]), "one value per crop kind"),
    (dict(min_scale_crops=[0.5, 0.4], max_scale_crops=[1.0, 0.3]), "min_scale_crops <= --max_scale_crops"),
    (dict(max_scale_crops=[1.5, 0.3]), "<= 1"),
    (dict(min_scale_crops=[0.0, 0.1]), "0 < --min_scale_crops"),
    (dict(min_scale_crops=[float("nan"), 0.1]), "0 < --min_scale_crops"),
    (dict(size_crops=[32, 0]), "--size_crops must be positive"),
    (dict(nmb_crops=[1, 0]), "--nmb_crops must be positive"),
    (dict(size_crops=[32], nmb_crops=[1], min_scale_crops=[0.1], max_scale_crops=[1.0]), "at least 2 crops"),
    (dict(color_strength=3.0), "--color_strength"),
])
def test_bad_crop_arguments_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        collator(**overrides)


# ---------------------------------------------------------------- datasets


def test_image_folder_is_sorted_labelled_and_ignores_what_is_not_an_image(tmp_path):
    for name in ("b/2.PNG", "b/1.png", "a/x/deep.png", "a/0.jpeg"):
        write_png(tmp_path / name, seed=len(name))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._0.jpeg").write_bytes(b"macOS metadata")
    (tmp_path / ".hidden").mkdir()
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["a", "b"]
    assert [str(dataset.path(i).relative_to(tmp_path)) for i in range(len(dataset))] == [
        "a/0.jpeg", "a/x/deep.png", "b/1.png", "b/2.PNG"]
    assert [dataset.label(i) for i in range(len(dataset))] == [0, 0, 1, 1]
    image, label = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 10) and label == 1
    assert torch.equal(image, torch.from_numpy(np.array(Image.open(tmp_path / "b/2.PNG"))).permute(2, 0, 1))


def test_tiny_imagenet_reads_like_torchvisions_image_folder(tiny_imagenet):
    dataset = load_image_dataset(str(tiny_imagenet / "train"))
    assert len(dataset) == 1500 and dataset.classes == (tiny_imagenet / "wnids.txt").read_text().split()
    assert all(dataset.label(i) == i // 150 for i in range(0, 1500, 149))
    image, label = dataset[1499]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and label == 9


def test_unreadable_images_are_skipped_with_one_warning_and_counted(tiny_imagenet, tmp_path, caplog):
    real = sorted((tiny_imagenet / "train" / "n01443537").iterdir())[:5]
    for folder in ("goldfish", "other"):
        (tmp_path / folder).mkdir()
    for index, path in enumerate(real):
        shutil.copy(path, tmp_path / ("goldfish" if index < 3 else "other") / path.name)
    (tmp_path / "goldfish" / "garbage.JPEG").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "other" / "truncated.JPEG").write_bytes(real[0].read_bytes()[:200])
    dataset = ImageFolderDataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="swav.data"):
        samples = [dataset[index] for index in range(len(dataset))]
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "garbage.JPEG" in warnings[0].getMessage() and "(1 so far)" in warnings[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)  # a warning line, never a traceback
    assert dataset.skipped == 2 and sum(isinstance(s, UnreadableImage) for s in samples) == 2
    crops = collator()(samples)["crops"]
    assert all(crop.shape[0] == 5 for crop in crops)  # the batch is smaller by the two unreadable images
    only_bad = [sample for sample in samples if isinstance(sample, UnreadableImage)]
    crops = collator()(only_bad)["crops"]
    assert all(crop.shape[0] == 1 for crop in crops)  # never empty: the next readable image stands in
    evaluation = EvalCollator(16)(samples)
    assert evaluation["images"].shape == (5, 3, 16, 16) and evaluation["skipped"] == 2


def test_a_folder_of_unreadable_images_only_is_a_user_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.jpg").write_bytes(b"not a jpeg")
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(UserError, match="none of the 1 images"):
        collator()([dataset[0]])


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=f"--dataset_path {tmp_path / 'missing'}: no such folder; pass an image folder"):
        load_image_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder has no class subfolders; pass an image folder"):
        load_image_dataset(str(tmp_path / "empty"))
    (tmp_path / "empty" / "class").mkdir()
    with pytest.raises(UserError, match="no images in class subfolders"):
        load_image_dataset(str(tmp_path / "empty"))
    write_png(tmp_path / "flat" / "val_0.png", seed=0)
    with pytest.raises(UserError, match="its 1 images are not in class subfolders"):
        ImageFolderDataset(tmp_path / "flat", argument="--val_dir")


def test_builtin_digits_are_scikit_learns_1797_real_scans(digits):
    from sklearn.datasets import load_digits

    dataset = load_image_dataset(BUILTIN_DIGITS)
    assert len(dataset) == 1797 and dataset.classes == [str(d) for d in range(10)]
    images = dataset.images
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert torch.bincount(dataset.labels).tolist() == np.bincount(load_digits().target).tolist()
    # shrunk back to 8x8, the images are the original scans (up to the bilinear upscaling's smoothing)
    shrunk = torch.nn.functional.avg_pool2d(images[:, :1].float(), 4).flatten()
    scans = torch.from_numpy(load_digits().images).float().flatten()
    assert torch.corrcoef(torch.stack([shrunk, scans]))[0, 1] > 0.95
    train, val = DigitsDataset("train"), DigitsDataset("val")  # evaluation's split: every 4th scan is val
    assert (len(train), len(val)) == (1347, 450)
    assert torch.equal(val.images, images[::4])
    assert torch.equal(train.labels, dataset.labels[torch.arange(1797) % 4 > 0])


def test_a_hub_dataset_id_offline_is_one_user_error_and_a_missing_path_is_not_a_hub_id(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("collab.hub.hub_reachable", lambda: False)
    with pytest.raises(UserError) as error:
        load_image_dataset("imagenet-1k")
    assert "'imagenet-1k': no such local folder, and the Hugging Face hub is unreachable" in str(error.value)
    assert BUILTIN_DIGITS in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="no such folder"):
        load_image_dataset("data/imagenet/train")  # the default: a missing folder, not a download


def test_a_hub_image_dataset_decodes_its_images_skips_corrupt_ones_and_keeps_labels(tmp_path):
    import datasets

    for index in range(2):
        write_png(tmp_path / f"{index}.png", seed=index)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    images = [{"bytes": (tmp_path / f"{index}.png").read_bytes(), "path": None} for index in range(2)]
    table = datasets.Dataset.from_dict(
        {"image": images + [{"bytes": b"garbage", "path": None}], "label": [1, 0, 1]}, features=features)
    dataset = HubImageDataset(table, "someone/pets")
    assert len(dataset) == 3 and dataset.classes == ["cat", "dog"]
    image, label = dataset[0]
    assert label == 1
    assert torch.equal(image, torch.from_numpy(np.array(Image.open(tmp_path / "0.png"))).permute(2, 0, 1))
    assert isinstance(dataset[2], UnreadableImage) and dataset.skipped == 1
