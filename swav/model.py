"""SwAV: ResNet trunk, projection head and prototypes, the swapped-prediction loss, LARS and the schedule.

Defined once, used by trainers, the coordinator (which applies the same optimizer step without a loss) and the
evaluation. Follows the SwAV paper's code (facebookresearch/swav, main_swav.py) except where a collaboration
needs otherwise; each such place says so.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
import transformers
from pytorch_optimizer import LARS
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from transformers import ResNetConfig, ResNetModel
from transformers import initialization as init

from collab.arguments import TrainingArguments
from collab.errors import UserError
from swav.arguments import SwavArguments

logger = logging.getLogger(__name__)

# kwargs of transformers.ResNetConfig. transformers' bottleneck ResNet with downsample_in_bottleneck=False puts the
# stride in the 3x3 convolution: torchvision's ResNet-50 (v1.5), the trunk of the SwAV paper.
MODEL_PRESETS: dict[str, dict] = {
    "resnet50": dict(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck",
        hidden_act="relu", downsample_in_first_stage=False, downsample_in_bottleneck=False,
    ),
    # About 0.3M parameters: a training step on a few 32 px crops takes milliseconds on a CPU (demo and tests).
    "resnet-tiny": dict(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
        hidden_act="relu", downsample_in_first_stage=False,
    ),
}

# The ResNetConfig fields that decide the trunk's parameters and what it computes (shared by every peer).
TRUNK_SHAPE_KEYS = ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act",
                    "downsample_in_first_stage", "downsample_in_bottleneck")
LARC_EPS = 1e-8  # apex LARC's eps in the trust ratio's denominator


class SwavConfig(transformers.PretrainedConfig):
    """The whole model's shape: the trunk's ResNetConfig kwargs, the projection MLP and the prototypes."""

    model_type = "swav"
    resnet: Optional[dict] = None  # None: the ResNet-50 preset
    hidden_dim: int = 2048
    feature_dim: int = 128
    num_prototypes: int = 3000

    def __post_init__(self, **kwargs) -> None:
        if self.resnet is None:
            self.resnet = copy.deepcopy(MODEL_PRESETS["resnet50"])
        super().__post_init__(**kwargs)


def model_config(preset: str, hidden_dim: int, feature_dim: int, num_prototypes: int) -> SwavConfig:
    if preset not in MODEL_PRESETS:
        raise UserError(f"--model_preset {preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}")
    return SwavConfig(resnet=copy.deepcopy(MODEL_PRESETS[preset]), hidden_dim=hidden_dim, feature_dim=feature_dim,
                      num_prototypes=num_prototypes)


def runs_of_equal_size(crops: Sequence[Tensor]) -> list[list[Tensor]]:
    """Consecutive crops of one resolution, grouped: each group goes through the trunk as one batch."""
    runs: list[list[Tensor]] = []
    for crop in crops:
        if runs and runs[-1][-1].shape[-2:] == crop.shape[-2:]:
            runs[-1].append(crop)
        else:
            runs.append([crop])
    return runs


class SwavModel(transformers.PreTrainedModel):
    """SwAV's ResNet: trunk, projection MLP, L2 normalisation, prototypes (a bias-free linear layer)."""

    config_class = SwavConfig
    base_model_prefix = "swav"
    main_input_name = "crops"

    def __init__(self, config: SwavConfig):
        super().__init__(config)
        self.trunk = ResNetModel(ResNetConfig(**config.resnet))
        self.projection_head = nn.Sequential(
            nn.Linear(self.trunk_dim, config.hidden_dim), nn.BatchNorm1d(config.hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, config.feature_dim),
        )
        self.prototypes = nn.Linear(config.feature_dim, config.num_prototypes, bias=False)
        self.post_init()

    @property
    def trunk_dim(self) -> int:
        return self.trunk.config.hidden_sizes[-1]

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's defaults for the head and prototypes, as in the SwAV code (the trunk has ResNet's own init)."""
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def features(self, images: Tensor) -> Tensor:
        """Pooled trunk features [B, trunk_dim]: what the linear probe and k-NN evaluation read."""
        return self.trunk(images).pooler_output.flatten(1)

    def forward(self, crops: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(embeddings [len(crops)*B, feature_dim], L2-normalised; their prototype scores), crop by crop.

        Like the SwAV code, the trunk runs once per run of consecutive crops of one resolution (fewer, larger
        batches); the head then sees all crops together, so its BatchNorm normalises over every crop.
        """
        features = torch.cat([self.features(torch.cat(run)) for run in runs_of_equal_size(crops)])
        embeddings = F.normalize(self.projection_head(features), dim=1)
        return embeddings, self.prototypes(embeddings)


@torch.no_grad()
def normalize_rows_(weight: Tensor) -> None:
    weight.copy_(F.normalize(weight, dim=1))


def build_model(config: SwavConfig) -> SwavModel:
    model = SwavModel(config)
    normalize_rows_(model.prototypes.weight)
    return model


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """The SwAV paper's Sinkhorn-Knopp: codes Q [B, K] (float32) for prototype scores [B, K].

    Q starts as exp(scores / epsilon); the iterations alternately scale it so that every prototype gets the same
    total mass and every sample the same; each row of the result sums to 1 (the last scaling is the samples'),
    each column to about B/K. The paper's code does this with exp and divisions; here the same scalings are
    done on log Q with logsumexp (identical in exact arithmetic), in float32 with autocast off, so large scores
    or a small epsilon neither overflow nor underflow a whole row or column to zero (0/0 = NaN in the paper's
    code): every row still sums to 1.
    """
    with torch.autocast(device_type=scores.device.type, enabled=False):
        log_q = scores.detach().float().t() / epsilon  # [K, B]
        num_prototypes, batch_size = log_q.shape
        log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
        for _ in range(iterations):
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(num_prototypes)
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(batch_size)
        return (log_q + math.log(batch_size)).exp().t()


class SwavCriterion:
    """The SwAV loss (swapped prediction of Sinkhorn codes between crops), with the paper's embedding queue.

    Differences from the paper's code, all forced by training on many independent peers: codes are computed over
    this peer's batch (plus its queue), not over the batch of all GPUs (the paper's distributed Sinkhorn), and
    the queue is this peer's own, so `queue_length` is per peer; the queue starts at the swarm's global step
    `queue_start_step` (the paper compared epochs). As in the paper's code, the queue is filled from then on but
    its scores are used only once it is full (before that, the zero rows of an unfilled queue would take mass).
    """

    def __init__(self, args: SwavArguments):
        self.args = args
        self.num_crops = sum(args.nmb_crops)
        if self.num_crops < 2 or not args.crops_for_assign:
            raise UserError(f"SwAV needs at least 2 crops and one crop in --crops_for_assign, got --nmb_crops "
                            f"{args.nmb_crops} and --crops_for_assign {args.crops_for_assign}")
        if any(not 0 <= crop_id < self.num_crops for crop_id in args.crops_for_assign):
            raise UserError(f"--crops_for_assign {args.crops_for_assign} must name crops 0..{self.num_crops - 1}")
        self.global_step = 0  # the swarm's global step, set by the trainer before every local step
        self.queue: Optional[Tensor] = None  # [len(crops_for_assign), queue_length, feature_dim], newest first
        self.queue_rows = 0  # how many rows of each crop's queue hold embeddings

    @property
    def queue_active(self) -> bool:
        return self.args.queue_length > 0 and self.global_step >= self.args.queue_start_step

    @property
    def queue_full(self) -> bool:
        return self.queue is not None and self.queue_rows >= self.args.queue_length

    def __call__(self, model: SwavModel, batch: dict) -> Tensor:
        crops = batch["crops"]
        if len(crops) != self.num_crops:
            raise ValueError(f"expected {self.num_crops} crops (--nmb_crops {self.args.nmb_crops}), got {len(crops)}")
        embeddings, scores = model(crops)
        scores_per_crop = scores.split(crops[0].shape[0])
        codes = self.codes(model, embeddings.detach(), scores_per_crop)
        loss = 0.0
        for crop_id, crop_codes in zip(self.args.crops_for_assign, codes):
            others = [view for view in range(self.num_crops) if view != crop_id]
            predictions = [self.swapped_prediction(crop_codes, scores_per_crop[view]) for view in others]
            loss = loss + sum(predictions) / len(others)
        return loss / len(codes)

    def swapped_prediction(self, codes: Tensor, scores: Tensor) -> Tensor:
        """Cross-entropy between one crop's codes and another crop's softmax(scores / temperature)."""
        log_probs = F.log_softmax(scores.float() / self.args.temperature, dim=1)
        return -(codes * log_probs).sum(dim=1).mean()

    @torch.no_grad()
    def codes(self, model: SwavModel, embeddings: Tensor, scores_per_crop: Sequence[Tensor]) -> list[Tensor]:
        """Sinkhorn codes of each assigned crop's samples (the queue's rows take part, their codes are dropped)."""
        batch_size = scores_per_crop[0].shape[0]
        assigned = [scores_per_crop[crop_id].float() for crop_id in self.args.crops_for_assign]
        if self.queue_active:
            if self.queue is None:
                logger.info(f"Global step {self.global_step}: the embedding queue is on (--queue_start_step "
                            f"{self.args.queue_start_step}, {self.args.queue_length} rows per assigned crop)")
            queue = self._queue_like(embeddings)
            if self.queue_full:
                assigned = [torch.cat([model.prototypes(queue[i]).float(), crop_scores])
                            for i, crop_scores in enumerate(assigned)]
            self._push(embeddings.split(batch_size))
        return [sinkhorn(crop_scores, self.args.epsilon, self.args.sinkhorn_iterations)[-batch_size:]
                for crop_scores in assigned]

    def _queue_like(self, embeddings: Tensor) -> Tensor:
        if self.queue is None or self.queue.device != embeddings.device:
            shape = (len(self.args.crops_for_assign), self.args.queue_length, embeddings.shape[1])
            self.queue = torch.zeros(shape, device=embeddings.device, dtype=torch.float32)
            self.queue_rows = 0
        return self.queue

    def _push(self, embeddings_per_crop: Sequence[Tensor]) -> None:
        """First in, first out: this batch's embeddings of each assigned crop go to the front of its queue."""
        length = self.args.queue_length
        for i, crop_id in enumerate(self.args.crops_for_assign):
            newest = embeddings_per_crop[crop_id].float()[:length]
            self.queue[i] = torch.cat([newest, self.queue[i, : length - len(newest)]])
        self.queue_rows = min(length, self.queue_rows + len(embeddings_per_crop[0]))


def parameter_groups(model: SwavModel, weight_decay: float, freeze_prototypes_steps: int) -> list[dict]:
    """All parameters in one group (SwAV applies weight decay and LARS to every one, BatchNorm and biases too);
    the prototypes in their own, which SwavLARS keeps frozen for the first steps and L2-normalises by row."""
    prototypes = list(model.prototypes.parameters())
    prototype_ids = {id(param) for param in prototypes}
    rest = [param for param in model.parameters() if id(param) not in prototype_ids]
    return [
        dict(params=rest, weight_decay=weight_decay),
        dict(params=prototypes, weight_decay=weight_decay, normalize_rows=True, frozen_steps=freeze_prototypes_steps),
    ]


class SwavLARS(LARS):
    """SGD with momentum inside LARS, exactly as apex's LARC(clip=False) over torch SGD in the SwAV code.

    For every parameter p with gradient g (biases and BatchNorm included), with weight decay wd, trust
    coefficient eta and momentum m:
        if ||p|| > 0 and ||g|| > 0:  g <- (g + wd * p) * eta * ||p|| / (||g|| + wd * ||p|| + 1e-8)
        otherwise:                   g is used as it is (no weight decay either)
        buf <- m * buf + g;  p <- p - lr * buf
    pytorch_optimizer's LARS computes the same ratio but differs where it matters, so only its constructor
    (validation of lr, momentum, wd and eta) is reused and step() is this class's: (1) it exempts every
    parameter with ndim <= 1 (biases, BatchNorm) from the trust ratio and the weight decay, so those would take
    plain SGD steps at the peak rate (2.4 in the paper) while LARC scales them like the rest; (2) with a zero
    gradient its ratio is eta / wd (1000 at the paper's values) applied to wd * p, which shrinks the weights,
    while LARC leaves them alone; (3) it has no 1e-8 in the denominator. Nesterov, dampening and maximize
    are not supported (SwAV uses none).

    For the collaboration (hivemind), as with albert.model.SwarmLamb:
    - the momentum buffers are created here, up front, and the state holds nothing else, so a peer that has
      stepped and one that has not have the same state layout (hivemind maps shipped state by position), and
      hivemind sees state tensors and skips its zero-gradient initialisation step;
    - what SwAV did to the prototypes outside its optimizer happens inside step(), so the coordinator, which
      applies the same step without computing a loss, ends with bit-identical parameters: a group with
      `frozen_steps` is not updated (parameters and momentum untouched, as SwAV's code set their gradients to
      None) while its `steps_taken` is below `frozen_steps`; a group with `normalize_rows` has its rows
      L2-normalised after each update (SwAV normalised the prototypes before every forward pass; after
      every update is the same, and a frozen step leaves them bit-identical instead of renormalising
      already-normal rows). `steps_taken` counts every step() of the group, whatever the gradients, and lives
      in the param group, so it travels with the optimizer's state_dict.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 1e-3):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         trust_coefficient=trust_coefficient, foreach=False)
        for group in self.param_groups:
            group.setdefault("frozen_steps", 0)
            group.setdefault("normalize_rows", False)
            group.setdefault("steps_taken", 0)
            for param in group["params"]:
                self.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def __str__(self) -> str:
        return "SwavLARS"

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["steps_taken"] >= group["frozen_steps"]:
                for param in group["params"]:
                    if param.grad is not None:
                        self._update(param, group)
                if group["normalize_rows"]:
                    for param in group["params"]:
                        normalize_rows_(param)
            group["steps_taken"] += 1
        return loss

    def _update(self, param: Tensor, group: dict) -> None:
        grad, weight_decay = param.grad, group["weight_decay"]
        param_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
        scaled = (param_norm > 0) & (grad_norm > 0)  # a tensor, not a bool: no device-to-host sync
        trust_ratio = torch.where(
            scaled, group["trust_coefficient"] * param_norm / (grad_norm + weight_decay * param_norm + LARC_EPS), 1.0
        )
        update = grad.add(param * scaled, alpha=weight_decay).mul_(trust_ratio)
        buffer = self.state[param]["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(update)
        param.add_(buffer, alpha=-group["lr"])


def make_optimizer_factory(training: TrainingArguments, swav: SwavArguments) -> Callable[[Iterable], SwavLARS]:
    return lambda param_groups: SwavLARS(
        param_groups, lr=training.learning_rate, momentum=swav.momentum, weight_decay=training.weight_decay,
        trust_coefficient=swav.lars_trust_coefficient,
    )


def learning_rate_at(step: int, training: TrainingArguments, swav: SwavArguments) -> float:
    """SwAV's schedule per global step: linear warm-up from --warmup_start_lr to --learning_rate over
    --warmup_steps, then cosine to --final_lr at --total_steps, constant after (paper: 0.3 -> 2.4 over 500 steps,
    cosine to 0.0048 at 5000)."""
    peak, warmup, total = training.learning_rate, training.warmup_steps, training.total_steps
    if step < warmup:
        return swav.warmup_start_lr + (peak - swav.warmup_start_lr) * step / warmup
    if step >= total:
        return swav.final_lr
    progress = (step - warmup) / (total - warmup)
    return swav.final_lr + 0.5 * (peak - swav.final_lr) * (1 + math.cos(math.pi * progress))


def make_scheduler_factory(training: TrainingArguments, swav: SwavArguments) -> Callable[[torch.optim.Optimizer],
                                                                                        LRScheduler]:
    """learning_rate_at as a LambdaLR (a factor of --learning_rate), stepped once per global step."""
    if not training.learning_rate > 0:
        raise UserError(f"--learning_rate must be positive, got {training.learning_rate}")
    return lambda optimizer: LambdaLR(
        optimizer, lambda step: learning_rate_at(step, training, swav) / training.learning_rate
    )


def averaged_buffers(model: nn.Module) -> list[Tensor]:
    """The BatchNorm running means and variances, sorted by name, which the kit averages across peers (each
    peer's own would drift apart); num_batches_tracked is an integer count and stays local."""
    return [buffer for _, buffer in sorted(model.named_buffers()) if buffer.is_floating_point()]


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def swarm_config(config: SwavConfig, swav: SwavArguments, target_batch_size: int,
                 training: TrainingArguments) -> dict:
    """The settings every peer of one run must share (JSON, lists not tuples); a peer whose settings differ is
    refused: model shape, crops, loss, optimizer and schedule, target batch."""
    trunk = ResNetConfig(**config.resnet)
    return _jsonable(dict(
        model="SwavModel", resnet={key: getattr(trunk, key) for key in TRUNK_SHAPE_KEYS},
        hidden_dim=config.hidden_dim, feature_dim=config.feature_dim, num_prototypes=config.num_prototypes,
        size_crops=swav.size_crops, nmb_crops=swav.nmb_crops, min_scale_crops=swav.min_scale_crops,
        max_scale_crops=swav.max_scale_crops, color_strength=swav.color_strength,
        temperature=swav.temperature, epsilon=swav.epsilon, sinkhorn_iterations=swav.sinkhorn_iterations,
        crops_for_assign=swav.crops_for_assign, queue_length=swav.queue_length,
        queue_start_step=swav.queue_start_step, freeze_prototypes_steps=swav.freeze_prototypes_steps,
        optimizer="lars", learning_rate=training.learning_rate, warmup_start_lr=swav.warmup_start_lr,
        final_lr=swav.final_lr, warmup_steps=training.warmup_steps, total_steps=training.total_steps,
        weight_decay=training.weight_decay, momentum=swav.momentum,
        lars_trust_coefficient=swav.lars_trust_coefficient, target_batch_size=target_batch_size,
    ))
