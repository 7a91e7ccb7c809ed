"""Fixtures of the SwAV track's tests: the Tiny-ImageNet subset in ../shared (see its SOURCE.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collab.lab.swarm import REPO_ROOT

TINY_IMAGENET = REPO_ROOT.parent / "shared" / "data" / "images" / "tiny-imagenet-200-subset"


@pytest.fixture(scope="session")
def tiny_imagenet() -> Path:
    """10 classes of Tiny-ImageNet: train/ (150 per class) and val/ (50 per class), 64 px (a skip is a failure
    in CI, see tests/conftest.py)."""
    if not (TINY_IMAGENET / "train").is_dir():
        pytest.skip(f"tiny-imagenet subset not found at {TINY_IMAGENET}")
    return TINY_IMAGENET


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors go fastest on one thread, and do not fight the machine's other work for cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
