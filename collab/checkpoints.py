"""Atomic, verified checkpoints: one folder per global step, written aside and renamed into place.

A checkpoint folder `step-<N>` holds the model in Hugging Face format (`save_pretrained`), `optimizer.pt`
(the collaborative optimizer's state, including the global step), `arguments.json` (the run's final
configuration) and `manifest.json` (size and SHA-256 of every file). A folder without a valid manifest is
torn or corrupted and is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from collab.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
OPTIMIZER_STATE = "optimizer.pt"
PREFIX = "step-"


class CorruptCheckpointError(Exception):
    """A checkpoint folder whose files do not match its manifest."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer_state: dict, arguments: dict, keep_last: int = 2
) -> Path:
    """Write `root/step-<step>` atomically and keep only the newest `keep_last` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".tmp-{PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    torch.save(optimizer_state, tmp / OPTIMIZER_STATE)
    (tmp / "arguments.json").write_text(json.dumps(arguments, indent=2, sort_keys=True, default=str))
    files = {path.name: dict(bytes=path.stat().st_size, sha256=_sha256(path)) for path in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps(dict(step=step, time=time.time(), files=files), indent=2))
    _fsync_tree(tmp)
    if final.exists():  # same step saved again (e.g. after a restart): replace it as a whole
        old = root / f".old-{PREFIX}{step}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _prune(root, keep_last)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(folder: Path) -> int:
    return int(folder.name[len(PREFIX):])


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root, oldest first (unverified)."""
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(folders, key=checkpoint_step)


def verify_checkpoint(folder: Path) -> dict:
    """Return the manifest if every file matches it; raise CorruptCheckpointError otherwise."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{folder}: missing or unreadable {MANIFEST} ({e})") from None
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CorruptCheckpointError(f"{folder}: {name} is missing or does not match the manifest")
    return manifest


def latest_valid_checkpoint(root: Path) -> Optional[Path]:
    """Newest checkpoint under root that passes verification; corrupted ones are reported and skipped."""
    for folder in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(folder)
            return folder
        except CorruptCheckpointError as e:
            logger.warning(f"Skipping corrupted checkpoint: {e}")
    return None


def load_optimizer_state(folder: Path) -> dict:
    return torch.load(folder / OPTIMIZER_STATE, map_location="cpu", weights_only=False)


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise UserError(f"checkpoint {folder} does not fit this model (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}): use the same model preset it was trained with")
