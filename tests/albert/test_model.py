import pytest
import torch

from albert.model import (
    MODEL_PRESETS,
    build_model,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
    swarm_config,
)
from collab.arguments import TrainingArguments
from collab.errors import UserError


def test_albert_large_preset_is_the_papers_model():
    config = model_config("albert-large", vocab_size=30000, pad_token_id=0)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.intermediate_size, config.embedding_size, config.max_position_embeddings) == (4096, 128, 512)
    assert config.num_hidden_groups == 1 and config.vocab_size == 30000


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="albert-tiny"):
        model_config("albert-huge", 100, 0)


def test_no_weight_decay_on_bias_and_layernorm():
    model = build_model(model_config("albert-tiny", 100, 0))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def state_layout(optimizer) -> list:
    return [(sorted(state), [tuple(v.shape) for _, v in sorted(state.items())]) for state in optimizer.state.values()]


def test_optimizer_state_layout_never_changes():
    """Peers exchange optimizer state by position: a fresh optimizer and a stepped one must line up."""
    args = TrainingArguments(learning_rate=0.01, warmup_steps=2, total_steps=10)
    model = build_model(model_config("albert-tiny", 100, 0))
    optimizer = make_optimizer_factory(args)(parameter_groups(model, args.weight_decay))
    scheduler = make_scheduler_factory(args)(optimizer)
    before = state_layout(optimizer)
    assert before and all(keys == ["exp_avg", "exp_avg_sq"] for keys, _ in before)
    weights = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        for param in model.parameters():
            param.grad = torch.randn_like(param)
        optimizer.step()
        scheduler.step()
    assert state_layout(optimizer) == before
    assert any(not torch.equal(w, p) for w, p in zip(weights, model.parameters()))


def test_swarm_config_captures_shape_and_optimizer():
    args = TrainingArguments()
    tiny = swarm_config(model_config("albert-tiny", 100, 0), 256, args)
    assert tiny["hidden_size"] == MODEL_PRESETS["albert-tiny"]["hidden_size"] and tiny["target_batch_size"] == 256
    assert tiny != swarm_config(model_config("albert-tiny", 101, 0), 256, args)
