"""ALBERT model presets, and the optimizer and schedule of the paper: defined once, used by trainer and monitor."""
from __future__ import annotations

from typing import Iterable

import torch
from pytorch_optimizer import Lamb
from transformers import AlbertConfig, AlbertForPreTraining, get_linear_schedule_with_warmup

from collab.arguments import TrainingArguments
from collab.errors import UserError

# ALBERT-large-v2 exactly as in the paper: 24 layers sharing one set of weights, hidden 1024, 16 heads,
# FFN 4096, factorised embeddings of 128, 30k vocabulary, sequences of 512, no dropout (v2).
MODEL_PRESETS: dict[str, dict] = {
    "albert-large": dict(
        embedding_size=128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=512, hidden_act="gelu_new", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_hidden_groups=1, inner_group_num=1, type_vocab_size=2,
    ),
    # A few hundred thousand parameters: trains on a laptop CPU in seconds per step (demo and tests).
    "albert-tiny": dict(
        embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=128, hidden_act="gelu_new", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_hidden_groups=1, inner_group_num=1, type_vocab_size=2,
    ),
}

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")
LAMB_CLAMP = 10000.0  # upper bound of the weight norm in LAMB's trust ratio (the paper's code used 10000)


def model_config(preset: str, vocab_size: int, pad_token_id: int) -> AlbertConfig:
    if preset not in MODEL_PRESETS:
        raise UserError(f"--model_preset {preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}")
    return AlbertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **MODEL_PRESETS[preset])


def build_model(config: AlbertConfig) -> AlbertForPreTraining:
    return AlbertForPreTraining(config)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights, none on biases and LayerNorm (as in BERT/ALBERT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if any(marker in name for marker in NO_DECAY) else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


class SwarmLamb(Lamb):
    """LAMB whose state has the same layout on every peer, before and after any number of steps.

    hivemind ships optimizer state between peers as a flat list of tensors and maps it back by position.
    pytorch_optimizer's LAMB adds diagnostics (weight_norm, adam_norm, trust_ratio) to its state on the first
    step, so a peer that has stepped and one that has not (a newcomer, the coordinator, an aux peer) disagree
    on that layout, and a downloaded state lands in the wrong buffers. Dropping the diagnostics after every
    step keeps the state to the two moment buffers created up front (initialize_state_).
    """

    DIAGNOSTICS = ("weight_norm", "adam_norm", "trust_ratio")

    def step(self, closure=None):
        loss = super().step(closure)
        for state in self.state.values():
            for key in self.DIAGNOSTICS:
                state.pop(key, None)
        return loss


def make_optimizer_factory(args: TrainingArguments):
    """LAMB (pytorch_optimizer) with clipping of the averaged gradient to --max_grad_norm inside step()."""

    def create(param_groups: Iterable) -> torch.optim.Optimizer:
        optimizer = SwarmLamb(
            param_groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
            weight_decay=args.weight_decay, weight_decouple=False, max_grad_norm=args.max_grad_norm,
            pre_norm=args.max_grad_norm > 0,
        )
        optimizer.clamp = LAMB_CLAMP
        initialize_state_(optimizer)
        return optimizer

    return create


def initialize_state_(optimizer: Lamb) -> None:
    """Create LAMB's moment buffers up front.

    hivemind initialises an optimizer without state tensors by running one step with zero gradients at the
    *peak* learning rate; with LAMB's coupled weight decay that step shrinks every weight by about (1 - lr)
    before training starts. With the buffers already there, hivemind skips that step.
    """
    for group in optimizer.param_groups:
        group.setdefault("step", 0)
        for param in group["params"]:
            optimizer.state[param]["exp_avg"] = torch.zeros_like(param)
            optimizer.state[param]["exp_avg_sq"] = torch.zeros_like(param)


def make_scheduler_factory(args: TrainingArguments):
    """Linear warm-up to the peak rate, then linear decay to zero at --total_steps, stepped per global step."""
    return lambda optimizer: get_linear_schedule_with_warmup(optimizer, args.warmup_steps, args.total_steps)


def swarm_config(config: AlbertConfig, target_batch_size: int, args: TrainingArguments) -> dict:
    """The settings every peer of one run must share; a peer whose settings differ is refused."""
    shape_keys = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_hidden_groups")
    return dict(
        model="AlbertForPreTraining", **{key: getattr(config, key) for key in shape_keys},
        target_batch_size=target_batch_size, optimizer="lamb", learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, total_steps=args.total_steps, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
    )
