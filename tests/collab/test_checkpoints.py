import torch
from transformers import AlbertConfig, AlbertForPreTraining

from collab.checkpoints import (
    CorruptCheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    save_checkpoint,
    verify_checkpoint,
)
import pytest

TINY = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32)


def test_save_is_verified_pruned_and_reloadable(tmp_path):
    model = AlbertForPreTraining(TINY)
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, model, {"state": {"local_epoch": step}}, {"lr": 1.0}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-10", "step-15"]
    assert not list(tmp_path.glob(".tmp-*"))
    newest = latest_valid_checkpoint(tmp_path)
    assert newest.name == "step-15" and verify_checkpoint(newest)["step"] == 15
    assert load_optimizer_state(newest)["state"]["local_epoch"] == 15
    reloaded = AlbertForPreTraining.from_pretrained(newest)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_corrupted_checkpoint_is_skipped(tmp_path):
    model = AlbertForPreTraining(TINY)
    save_checkpoint(tmp_path, 1, model, {"state": {}}, {}, keep_last=3)
    newest = save_checkpoint(tmp_path, 2, model, {"state": {}}, {}, keep_last=3)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a torn write
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(newest)
    assert latest_valid_checkpoint(tmp_path).name == "step-1"
