"""Tests of swav/evaluate.py: the k-NN and linear-probe classifiers, model loading, the script end to end."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collab.checkpoints import save_checkpoint
from collab.cli import run_main
from collab.lab.swarm import REPO_ROOT
from swav.evaluate import knn_top1, linear_probe_top1, load_model_for_evaluation, main
from swav.model import build_model, model_config

SCRIPT = REPO_ROOT / "swav" / "evaluate.py"
RESULT_LINE = re.compile(
    r"^k-NN top-1 (\d+\.\d)% \| linear top-1 (\d+\.\d)% \| (.+) \| (\d+) train / (\d+) val images$")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image_folders(tmp_path) -> tuple[Path, Path]:
    """Small train/ and val/ folders of real PNG files in two classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for label in ("cats", "dogs"):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / label / f"{index}.png")
    return tmp_path / "train", tmp_path / "val"


def tiny_model():
    return build_model(model_config("resnet-tiny", hidden_dim=32, feature_dim=16, num_prototypes=20))


def clusters(num_classes: int, per_class: int, seed: int, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around one random direction per class: separable by cosine similarity and by a linear layer."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels


def shuffled(labels: torch.Tensor, seed: int) -> torch.Tensor:
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


# ---------------------------------------------------------------- classifiers


def test_knn_is_near_perfect_on_separable_features_and_near_chance_on_shuffled_labels():
    train, train_labels = clusters(10, 100, seed=1)
    test, test_labels = clusters(10, 50, seed=2)
    assert knn_top1(train, train_labels, test, test_labels, k=20, temperature=0.07) > 99.0
    chance = knn_top1(train, shuffled(train_labels, 3), test, test_labels, k=20, temperature=0.07)
    assert chance < 20.0  # 10 classes: 10% expected


def test_knn_votes_are_weighted_by_similarity_through_the_temperature():
    # two neighbours of class 0 right on the test point, three of class 1 farther away
    train = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.6, 0.8], [0.6, 0.81], [0.6, 0.79]])
    train_labels = torch.tensor([0, 0, 1, 1, 1])
    test, test_labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_top1(train, train_labels, test, test_labels, k=5, temperature=0.07) == 100.0  # closeness wins
    assert knn_top1(train, train_labels, test, test_labels, k=5, temperature=100.0) == 0.0  # nearly a plain count


def test_linear_probe_is_near_perfect_on_separable_features_and_near_chance_on_shuffled_labels():
    train, train_labels = clusters(10, 100, seed=1)
    test, test_labels = clusters(10, 50, seed=2)
    assert linear_probe_top1(train, train_labels, test, test_labels, epochs=10, lr=0.1) > 99.0
    chance = linear_probe_top1(train, shuffled(train_labels, 3), test, test_labels, epochs=10, lr=0.1)
    assert chance < 20.0


# ---------------------------------------------------------------- models


def test_a_checkpoint_saved_by_the_kit_loads_with_its_step_and_run(tmp_path, caplog):
    model = tiny_model()
    root = tmp_path / "run" / "checkpoints"
    save_checkpoint(root, 3, model, {"step": 3}, {"run_id": "swav-test"})
    newest = save_checkpoint(root, 5, tiny_model(), {"step": 5}, {"run_id": "swav-test"})
    (newest / "model.safetensors").write_bytes(b"torn")  # the newest fails verification: step 3 is taken
    images = torch.randn(2, 3, 32, 32)
    for name in (root, root.parent, root / "step-3"):  # a checkpoints folder, the run's folder, one checkpoint
        loaded, description = load_model_for_evaluation(str(name))
        assert description == f"step-3 of run swav-test ({root / 'step-3'})"
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded.features(images), model.eval().features(images))
    assert "Skipping corrupted checkpoint" in caplog.text


def test_random_init_is_seeded():
    first, description = load_model_for_evaluation(None, random_init=True, model_preset="resnet-tiny", seed=4)
    second, _ = load_model_for_evaluation(None, random_init=True, model_preset="resnet-tiny", seed=4)
    other, _ = load_model_for_evaluation(None, random_init=True, model_preset="resnet-tiny", seed=5)
    assert description == "random init of resnet-tiny (seed 4)"
    weights = [model.trunk.embedder.embedder.convolution.weight for model in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


# ---------------------------------------------------------------- the script


def test_random_init_end_to_end_on_tiny_imagenet_prints_one_result_line(tiny_imagenet, tmp_path, capsys):
    output = tmp_path / "results.json"
    results = main(["--random_init", "--model_preset", "resnet-tiny", "--image_size", "32", "--device", "cpu",
                    "--train_dir", str(tiny_imagenet / "train"), "--val_dir", str(tiny_imagenet / "val"),
                    "--max_train_images", "200", "--max_val_images", "100", "--batch_size", "100",
                    "--num_workers", "0", "--linear_epochs", "5", "--output_json", str(output)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    match = RESULT_LINE.match(lines[0])
    assert match, lines[0]
    knn, linear = float(match[1]), float(match[2])
    assert 0 <= knn <= 100 and 0 <= linear <= 100
    assert match[3] == "random init of resnet-tiny (seed 0)" and (match[4], match[5]) == ("200", "100")
    assert (results["train_images"], results["val_images"], results["num_classes"]) == (200, 100, 10)
    assert json.loads(output.read_text())["knn_top1"] == results["knn_top1"]


def test_a_checkpoint_end_to_end_on_the_offline_digits_split(tmp_path, capsys):
    save_checkpoint(tmp_path / "checkpoints", 3, tiny_model(), {}, {"run_id": "swav-digits"})
    results = main(["--checkpoint", str(tmp_path / "checkpoints"), "--train_dir", "builtin:digits", "--val_dir",
                    "builtin:digits", "--image_size", "32", "--max_train_images", "300", "--max_val_images", "100",
                    "--linear_epochs", "5", "--num_workers", "0", "--device", "cpu"])
    match = RESULT_LINE.match(capsys.readouterr().out.strip())
    assert match and match[3] == f"step-3 of run swav-digits ({tmp_path / 'checkpoints' / 'step-3'})"
    assert (results["train_images"], results["val_images"], results["num_classes"]) == (300, 100, 10)
    assert 0 <= results["knn_top1"] <= 100 and 0 <= results["linear_top1"] <= 100


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--random_init", "--model_preset", "--seed", "--train_dir", "--val_dir",
                 "--image_size", "--batch_size", "--num_workers", "--knn_k", "--knn_temperature", "--linear_epochs",
                 "--linear_lr", "--device", "--max_train_images", "--max_val_images", "--output_json"):
        assert flag in text


def run_evaluation(monkeypatch, capsys, *args: str) -> str:
    """Run the script's main as the command line does; return its stderr after the exit with status 2."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # run_main's handlers are for scripts, not for pytest
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(list(args)))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint",
     "error: --checkpoint {tmp}/run/checkpoints/step-9: no such folder; pass a checkpoint folder"),
    ("no checkpoint in folder", "error: --checkpoint {tmp}/nothing: no checkpoint in this folder"),
    ("only corrupt checkpoints", "error: --checkpoint {tmp}/torn: none of its checkpoints passes verification"),
    ("hub id offline", "error: --checkpoint 'someone/swav-resnet50': no such local folder, and no SwAV model by that "
                       "id could be loaded from the hub (the Hugging Face hub is unreachable and it is not cached)"),
    ("missing train folder", "error: --train_dir {tmp}/nowhere: no such folder; pass an image folder"),
    ("empty val folder", "error: --val_dir {tmp}/empty: the folder has no class subfolders"),
    ("different classes", "error: --train_dir and --val_dir must have the same class folders"),
    ("no model", "error: pass either --checkpoint (a checkpoint folder or hub id) or --random_init, not neither"),
])
def test_bad_inputs_are_one_error_line(case, expected, image_folders, tmp_path, monkeypatch, capsys):
    train, val = image_folders
    model = ["--checkpoint", str(tmp_path / "nothing")]
    (tmp_path / "nothing").mkdir()
    if case == "missing checkpoint":
        model = ["--checkpoint", str(tmp_path / "run" / "checkpoints" / "step-9")]
    elif case == "only corrupt checkpoints":
        torn = save_checkpoint(tmp_path / "torn", 2, tiny_model(), {}, {})
        (torn / "config.json").write_text("{}")
        model = ["--checkpoint", str(tmp_path / "torn")]
    elif case == "hub id offline":
        monkeypatch.setattr("collab.hub.hub_reachable", lambda: False)
        model = ["--checkpoint", "someone/swav-resnet50"]
    elif case == "missing train folder":
        train = tmp_path / "nowhere"
    elif case == "empty val folder":
        val = tmp_path / "empty"
        val.mkdir()
    elif case == "different classes":
        (val / "dogs").rename(val / "wolves")
    elif case == "no model":
        model = []
    stderr = run_evaluation(monkeypatch, capsys, *model, "--train_dir", str(train), "--val_dir", str(val),
                            "--device", "cpu", "--num_workers", "0")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    assert errors[0].startswith(expected.format(tmp=tmp_path)), errors[0]
    assert "Traceback" not in stderr


def test_the_script_reports_a_bad_checkpoint_in_one_line_without_traceback(image_folders, tmp_path):
    train, val = image_folders
    done = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(tmp_path / "missing"), "--train_dir",
                           str(train), "--val_dir", str(val)], capture_output=True, text=True, timeout=150,
                          cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith(f"error: --checkpoint {tmp_path / 'missing'}: no such folder")
    assert done.stdout == ""
