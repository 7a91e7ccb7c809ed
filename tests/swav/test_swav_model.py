import copy
import json
import math
import sys

import pytest
import torch

import swav.model as swav_model
from collab.arguments import TrainingArguments
from collab.errors import UserError
from swav.arguments import SwavArguments
from swav.model import (
    MODEL_PRESETS,
    SwavCriterion,
    SwavLARS,
    SwavModel,
    averaged_buffers,
    build_model,
    learning_rate_at,
    make_optimizer_factory,
    make_scheduler_factory,
    model_config,
    parameter_groups,
    sinkhorn,
    swarm_config,
)

BATCH = 8

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_args(**overrides) -> SwavArguments:
    settings = dict(model_preset="resnet-tiny", size_crops=[32, 16], nmb_crops=[2, 2], hidden_dim=32, feature_dim=16,
                    num_prototypes=10, epsilon=0.05, queue_length=0, freeze_prototypes_steps=0)
    return SwavArguments(**{**settings, **overrides})


def tiny_model(args: SwavArguments, seed: int = 0) -> SwavModel:
    torch.manual_seed(seed)
    return build_model(model_config(args.model_preset, args.hidden_dim, args.feature_dim, args.num_prototypes))


def crops_batch(seed: int = 0, batch: int = BATCH) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return dict(crops=[torch.randn(batch, 3, size, size, generator=generator) for size in (32, 32, 16, 16)])


def training(**overrides) -> TrainingArguments:
    return TrainingArguments(**{**dict(learning_rate=1.0, warmup_steps=0, total_steps=100, weight_decay=1e-6),
                                **overrides})


def optimizer_for(model: SwavModel, args: SwavArguments, train: TrainingArguments) -> SwavLARS:
    groups = parameter_groups(model, train.weight_decay, args.freeze_prototypes_steps)
    return make_optimizer_factory(train, args)(groups)


def train_step(model, criterion, optimizer, batch) -> float:
    loss = criterion(model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def random_gradients_(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


# ---------------------------------------------------------------- model


def test_resnet50_preset_is_the_papers_trunk():
    config = model_config("resnet50", 2048, 128, 3000)
    trunk = swav_model.ResNetConfig(**config.resnet)
    assert (trunk.embedding_size, trunk.hidden_sizes, trunk.depths) == (64, [256, 512, 1024, 2048], [3, 4, 6, 3])
    # bottleneck with the stride in the 3x3 convolution, no stride in the first stage: torchvision's ResNet-50
    assert trunk.layer_type == "bottleneck" and not trunk.downsample_in_bottleneck
    assert not trunk.downsample_in_first_stage
    assert (config.hidden_dim, config.feature_dim, config.num_prototypes) == (2048, 128, 3000)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="resnet-tiny"):
        model_config("resnet18", 32, 16, 10)


def test_model_module_does_not_import_torchvision():
    assert "torchvision" not in sys.modules


def test_forward_runs_the_trunk_once_per_run_of_one_resolution():
    args = tiny_args()
    model = tiny_model(args)
    calls = []
    model.trunk.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    embeddings, scores = model(crops_batch()["crops"])
    assert calls == [(2 * BATCH, 3, 32, 32), (2 * BATCH, 3, 16, 16)]
    assert embeddings.shape == (4 * BATCH, args.feature_dim) and scores.shape == (4 * BATCH, args.num_prototypes)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(4 * BATCH), atol=1e-5)
    calls.clear()
    crops = crops_batch()["crops"]
    model([crops[0], crops[2], crops[1]])
    assert [shape[-1] for shape in calls] == [32, 16, 32]
    assert model.features(crops[0]).shape == (BATCH, model.trunk_dim) and model.trunk_dim == 128


def test_prototypes_are_unit_rows_at_build():
    model = tiny_model(tiny_args())
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-6)


def test_save_pretrained_and_from_pretrained_give_identical_outputs(tmp_path):
    args = tiny_args()
    model = tiny_model(args)
    batch = crops_batch()
    model(batch["crops"])  # train mode: moves the BatchNorm running statistics away from their initial values
    model.save_pretrained(tmp_path)
    loaded = SwavModel.from_pretrained(tmp_path)
    model.eval(), loaded.eval()
    shape = ("resnet", "hidden_dim", "feature_dim", "num_prototypes")
    assert [getattr(loaded.config, key) for key in shape] == [getattr(model.config, key) for key in shape]
    with torch.no_grad():
        for expected, actual in zip(model(batch["crops"]), loaded(batch["crops"])):
            assert torch.equal(expected, actual)


def test_averaged_buffers_are_the_float_batchnorm_statistics_sorted_by_name():
    model = tiny_model(tiny_args())
    names = {id(buffer): name for name, buffer in model.named_buffers()}
    buffers = averaged_buffers(model)
    listed = [names[id(buffer)] for buffer in buffers]
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert listed == sorted(listed) and len(listed) == 2 * len(batch_norms)
    assert all(name.endswith(("running_mean", "running_var")) for name in listed)
    assert all(buffer.is_floating_point() for buffer in buffers)


# ---------------------------------------------------------------- Sinkhorn


def paper_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """distributed_sinkhorn of the SwAV code on one process, in float64."""
    q = torch.exp(scores.double() / epsilon).t()
    num_prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).t()


def test_sinkhorn_gives_each_prototype_an_equal_share_and_each_sample_a_distribution():
    scores = torch.rand(64, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    assert codes.dtype == torch.float32 and (codes >= 0).all()
    assert torch.allclose(codes.sum(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(codes.sum(dim=0), torch.full((8,), 64 / 8), rtol=1e-3)
    few = sinkhorn(scores, epsilon=0.05, iterations=3)  # the paper's 3: rows exact, columns within a quarter
    assert torch.allclose(few.sum(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(few.sum(dim=0), torch.full((8,), 64 / 8), rtol=0.25)


def test_sinkhorn_matches_the_papers_code():
    scores = torch.rand(32, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(sinkhorn(scores, 0.05, 3).double(), paper_sinkhorn(scores, 0.05, 3), atol=1e-5)


def test_sinkhorn_stays_finite_with_large_scores_and_half_precision():
    scores = torch.randn(16, 10, generator=torch.Generator().manual_seed(2)) * 1000
    codes = sinkhorn(scores, epsilon=0.03, iterations=3)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.sum(dim=1), torch.ones(16), atol=1e-4)
    assert not torch.isfinite(paper_sinkhorn(scores, 0.03, 3)).all()  # where the paper's exp and divisions give NaN
    half = sinkhorn(scores.clamp(-1, 1).half(), epsilon=0.03, iterations=3)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


# ---------------------------------------------------------------- loss


def test_loss_falls_on_a_fixed_batch():
    args = tiny_args()
    model = tiny_model(args)
    criterion, optimizer = SwavCriterion(args), optimizer_for(model, args, training())
    batch = crops_batch()
    losses = [train_step(model, criterion, optimizer, batch) for _ in range(25)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_loss_under_autocast_is_float32_and_finite():
    args = tiny_args(queue_length=BATCH, queue_start_step=0)
    model = tiny_model(args)
    criterion, optimizer = SwavCriterion(args), optimizer_for(model, args, training())
    for step in range(2):  # the second call uses the full queue
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = criterion(model, crops_batch(step))
        assert loss.dtype == torch.float32 and math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert criterion.queue.dtype == torch.float32 and criterion.queue_full
    assert all(torch.isfinite(param).all() for param in model.parameters())


def test_bad_crops_for_assign_is_a_user_error():
    with pytest.raises(UserError, match="crops_for_assign"):
        SwavCriterion(tiny_args(crops_for_assign=[0, 4]))


def test_queue_waits_for_its_start_step_then_fills_first_in_first_out_and_is_used_once_full(monkeypatch):
    args = tiny_args(queue_length=3 * BATCH, queue_start_step=2)
    model = tiny_model(args)
    criterion = SwavCriterion(args)
    sinkhorn_rows = []
    monkeypatch.setattr(swav_model, "sinkhorn",
                        lambda scores, *rest: sinkhorn_rows.append(len(scores)) or sinkhorn(scores, *rest))
    for step in range(2):
        criterion.global_step = step
        assert not criterion.queue_active
        assert math.isfinite(criterion(model, crops_batch(step)).item())
        assert criterion.queue is None and criterion.queue_rows == 0
    expected_rows = [BATCH, 2 * BATCH, 3 * BATCH, 3 * BATCH]
    for step, rows in zip(range(2, 6), expected_rows):
        criterion.global_step = step
        assert criterion.queue_active
        was_full = criterion.queue_full
        sinkhorn_rows.clear()
        batch = crops_batch(step)
        loss = criterion(model, batch)
        assert math.isfinite(loss.item())
        assert criterion.queue_rows == rows and criterion.queue.shape == (2, 3 * BATCH, args.feature_dim)
        assert sinkhorn_rows == [(3 * BATCH if was_full else 0) + BATCH] * 2
        with torch.no_grad():
            embeddings, _ = model(batch["crops"])  # train mode, same batch: the same embeddings again
        for i, crop_id in enumerate(args.crops_for_assign):  # newest first
            assert torch.allclose(criterion.queue[i, :BATCH], embeddings[crop_id * BATCH:(crop_id + 1) * BATCH],
                                  atol=1e-6)
    assert criterion.queue_full


# ---------------------------------------------------------------- optimizer


def test_prototypes_stay_frozen_then_move_and_stay_unit_rows():
    args = tiny_args(freeze_prototypes_steps=2)
    model = tiny_model(args)
    criterion, optimizer = SwavCriterion(args), optimizer_for(model, args, training())
    prototypes = model.prototypes.weight
    momentum = optimizer.state[prototypes]["momentum_buffer"]
    initial, trunk_initial = prototypes.detach().clone(), model.projection_head[0].weight.detach().clone()
    for step in range(2):
        train_step(model, criterion, optimizer, crops_batch(step))
        assert prototypes.grad is not None and prototypes.grad.abs().sum() > 0  # frozen by the optimizer, not autograd
        assert torch.equal(prototypes, initial) and not momentum.any()
        assert optimizer.param_groups[1]["steps_taken"] == step + 1
    assert not torch.equal(model.projection_head[0].weight, trunk_initial)  # the rest trained meanwhile
    train_step(model, criterion, optimizer, crops_batch(2))
    assert not torch.equal(prototypes, initial) and momentum.any()
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(args.num_prototypes), atol=1e-6)


def test_a_zero_gradient_step_counts_and_changes_no_weight():
    """hivemind's state-initialisation step (zero gradients at the peak lr) must not decay the weights."""
    args = tiny_args(freeze_prototypes_steps=5)
    model = tiny_model(args)
    optimizer = optimizer_for(model, args, training(weight_decay=0.1))
    weights = [param.detach().clone() for param in model.parameters()]
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert [group["steps_taken"] for group in optimizer.param_groups] == [1, 1]
    assert all(torch.equal(before, after) for before, after in zip(weights, model.parameters()))


def state_layout(optimizer) -> list:
    state = optimizer.state_dict()["state"]
    return [(key, sorted(state[key]), [tuple(state[key][name].shape) for name in sorted(state[key])])
            for key in state]


def test_optimizer_state_layout_is_the_same_before_and_after_steps():
    """Peers exchange optimizer state by position: a fresh optimizer and a stepped one must line up."""
    args = tiny_args(freeze_prototypes_steps=1)
    model = tiny_model(args)
    optimizer = optimizer_for(model, args, training())
    before = state_layout(optimizer)
    group_keys = [sorted(group) for group in optimizer.state_dict()["param_groups"]]
    assert len(before) == len(list(model.parameters()))
    assert all(names == ["momentum_buffer"] for _, names, _ in before)
    for seed in range(3):
        random_gradients_(model, seed)
        optimizer.step()
    assert state_layout(optimizer) == before
    assert [sorted(group) for group in optimizer.state_dict()["param_groups"]] == group_keys


def test_steps_taken_travels_with_the_state_dict():
    args = tiny_args(freeze_prototypes_steps=4)
    model = tiny_model(args)
    optimizer = optimizer_for(model, args, training())
    for seed in range(3):
        random_gradients_(model, seed)
        optimizer.step()
    fresh = optimizer_for(copy.deepcopy(model), args, training())
    fresh.load_state_dict(optimizer.state_dict())
    assert [(group["steps_taken"], group["frozen_steps"]) for group in fresh.param_groups] == [(3, 0), (3, 4)]
    assert fresh.param_groups[1]["normalize_rows"] and not fresh.param_groups[0]["normalize_rows"]


def test_same_gradients_from_the_same_start_give_identical_parameters():
    """The coordinator applies the step without a loss and must end bit-identical to the trainers."""
    args = tiny_args(freeze_prototypes_steps=1)
    first = tiny_model(args)
    second = copy.deepcopy(first)
    optimizers = [optimizer_for(model, args, training()) for model in (first, second)]
    for seed in range(3):
        for model, optimizer in zip((first, second), optimizers):
            random_gradients_(model, seed)
            optimizer.step()
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def apex_larc_sgd_step(params, sgd: torch.optim.SGD, weight_decay: float, trust: float) -> None:
    """apex's LARC(clip=False) step over torch SGD (with SGD's own weight decay absorbed), as the SwAV code ran."""
    with torch.no_grad():
        for param in params:
            param_norm, grad_norm = torch.norm(param), torch.norm(param.grad)
            if param_norm != 0 and grad_norm != 0:
                adaptive_lr = trust * param_norm / (grad_norm + param_norm * weight_decay + 1e-8)
                param.grad += weight_decay * param
                param.grad *= adaptive_lr
    sgd.step()


def test_swav_lars_is_apex_larc_over_sgd_for_every_parameter():
    """Weights, biases, BatchNorm scales, a zero-initialised bias and a zero gradient: all as in LARC + SGD."""
    generator = torch.Generator().manual_seed(3)
    start = [torch.randn(6, 4, generator=generator), torch.randn(6, generator=generator), torch.ones(6),
             torch.zeros(6), torch.randn(3, generator=generator)]
    ours = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    reference = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    lr, momentum, weight_decay, trust = 2.4, 0.9, 1e-3, 1e-3
    optimizer = SwavLARS(ours, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust)
    sgd = torch.optim.SGD(reference, lr=lr, momentum=momentum, weight_decay=0.0)
    for step in range(4):
        for index, (a, b) in enumerate(zip(ours, reference)):
            grad = torch.zeros_like(a) if index == 4 and step < 2 else torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        optimizer.step()
        apex_larc_sgd_step(reference, sgd, weight_decay, trust)
        for a, b in zip(ours, reference):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- schedule and swarm settings


def test_schedule_is_the_papers_warmup_then_cosine():
    train, args = training(learning_rate=2.4, warmup_steps=500, total_steps=5000), SwavArguments()
    assert learning_rate_at(0, train, args) == pytest.approx(0.3)
    assert learning_rate_at(250, train, args) == pytest.approx(1.35)
    assert learning_rate_at(500, train, args) == pytest.approx(2.4)
    assert learning_rate_at(2750, train, args) == pytest.approx(0.0048 + 0.5 * (2.4 - 0.0048))
    assert learning_rate_at(5000, train, args) == pytest.approx(0.0048)
    assert learning_rate_at(9000, train, args) == pytest.approx(0.0048)
    optimizer = SwavLARS([torch.nn.Parameter(torch.ones(2))], lr=train.learning_rate)
    scheduler = make_scheduler_factory(train, args)(optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3)
    for _ in range(500):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.4)


def test_swarm_config_is_json_and_tells_runs_apart():
    train, args = TrainingArguments(), SwavArguments()
    config = swarm_config(model_config("resnet50", 2048, 128, 3000), args, 4096, train)
    assert json.loads(json.dumps(config)) == config  # JSON-serialisable, lists not tuples
    assert config["resnet"]["hidden_sizes"] == MODEL_PRESETS["resnet50"]["hidden_sizes"]
    assert config["nmb_crops"] == [2, 6] and config["target_batch_size"] == 4096
    tiny = swarm_config(model_config("resnet-tiny", 2048, 128, 3000), args, 4096, train)
    assert tiny != config
    assert swarm_config(model_config("resnet50", 2048, 128, 3000), tiny_args(), 4096, train) != config
