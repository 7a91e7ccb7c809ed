#!/usr/bin/env python3
"""How far do peers drift apart when every round of a step succeeds? ALBERT-tiny, LAMB, N peers, one process.

Each global step every peer computes the gradient of its own batch of the built-in corpus on its own copy of the
model; the gradients are averaged with the arithmetic of hivemind 1.1.12's all-reduce, then every peer takes its
own LAMB step (albert/model.py's optimizer and schedule). Reported per step: the largest parameter difference
between any two peers, and that gap in units of the step's largest move.

The all-reduce arithmetic (checked against a real round in tests/collab/test_optimizer.py): the flat vector is cut
into one span per peer; the span's reducer averages its own exact values with the others' values as they arrive
over the wire (compressed), and hands every other peer that peer's *own* fp32 values plus the compressed
difference to the average. Simulated here rather than run through real averagers because a hundred rounds of
real matchmaking take minutes per variant and their timing varies; the arithmetic is the same.

Variants:
- none: no compression (the wire carries fp32).
- fp16: hivemind's Float16Compression as is.
- fp16-grid: fp16 with the kit's grid (collab.optimizer.round_to_fp16_grid_ before and after the round, as
  RoleGradientAverager does).

    python benchmarks/fp16_drift.py                        # writes benchmarks/results/fp16_drift.{json,md,png}
    python benchmarks/fp16_drift.py --steps 20 --seeds 0 --results_dir /tmp/drift     # a quick look
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from albert.data import load_pretraining_dataset, make_collator  # noqa: E402
from albert.model import (  # noqa: E402
    build_model, make_optimizer_factory, make_scheduler_factory, model_config, parameter_groups,
)
from benchmarks.common import machine_info, markdown_table, pyplot, write_results  # noqa: E402
from collab.arguments import TrainingArguments  # noqa: E402
from collab.optimizer import on_fp16_grid, round_to_fp16_grid_  # noqa: E402

VARIANTS = ("none", "fp16", "fp16-grid")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--peers", type=int, default=3, help="Peers averaging at every step.")
    parser.add_argument("--steps", type=int, default=100, help="Global steps per run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="One run per seed (batches drawn).")
    parser.add_argument("--batch_size", type=int, default=32, help="Sequences per peer per step.")
    parser.add_argument("--learning_rate", type=float, default=0.02, help="LAMB's peak rate (albert/configs/demo.json).")
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--total_steps", type=int, default=200, help="Steps of the linear decay schedule.")
    parser.add_argument("--dataset_path", default=None,
                        help="A dataset from albert/tokenize_wikitext103.py; default: built from the built-in corpus.")
    parser.add_argument("--output_dir", default=None, help="Where the built dataset goes; default: a temporary folder.")
    parser.add_argument("--results_dir", default=str(REPO_ROOT / "benchmarks/results"))
    parser.add_argument("--name", default="fp16_drift", help="Results go to <results_dir>/<name>.*")
    return parser.parse_args(argv)


def simulated_all_reduce(local: list[torch.Tensor], variant: str) -> list[torch.Tensor]:
    """Each peer's result of one all-reduce of equally weighted flat vectors (see the module docstring)."""
    wire = (lambda tensor: tensor.clone()) if variant == "none" else on_fp16_grid
    if variant == "fp16-grid":
        local = [value.clone() for value in local]
        for value in local:
            round_to_fp16_grid_(value)
    peers, size = len(local), local[0].numel()
    bounds = [size * index // peers for index in range(peers + 1)]
    results = [value.clone() for value in local]
    for reducer in range(peers):
        span = slice(bounds[reducer], bounds[reducer + 1])
        received = [local[k][span] if k == reducer else wire(local[k][span]) for k in range(peers)]
        average = sum(received) / peers
        for k in range(peers):
            results[k][span] = average if k == reducer else local[k][span] + wire(average - received[k])
    if variant == "fp16-grid":
        for value in results:
            round_to_fp16_grid_(value)
    return results


def flat(tensors) -> torch.Tensor:
    return torch.cat([tensor.detach().reshape(-1) for tensor in tensors])


def run(variant: str, seed: int, args: argparse.Namespace, dataset, tokenizer) -> list[dict]:
    torch.manual_seed(0)  # one initial model for every variant and seed
    collate = make_collator(tokenizer)
    base = build_model(model_config("albert-tiny", len(tokenizer), tokenizer.pad_token_id))
    training = TrainingArguments(per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
                                 warmup_steps=args.warmup_steps, total_steps=args.total_steps, device="cpu")
    peers = []
    for _ in range(args.peers):
        model = copy.deepcopy(base)
        optimizer = make_optimizer_factory(training)(parameter_groups(model, training.weight_decay))
        peers.append((model, optimizer, make_scheduler_factory(training)(optimizer)))
    names = [name for name, _ in base.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the collator's masking
    rows = []
    for step in range(1, args.steps + 1):
        before = flat(peers[0][0].parameters())
        gradients, losses = [], []
        for model, _, _ in peers:
            picks = torch.randint(len(dataset), (args.batch_size,), generator=generator).tolist()
            model.zero_grad()
            loss = model(**collate([dataset[index] for index in picks])).loss
            loss.backward()
            losses.append(loss.item())
            gradients.append(flat(param.grad for param in model.parameters()))
        for (model, optimizer, scheduler), averaged in zip(peers, simulated_all_reduce(gradients, variant)):
            offset = 0
            for param in model.parameters():
                param.grad.copy_(averaged[offset:offset + param.numel()].view_as(param))
                offset += param.numel()
            optimizer.step()
            scheduler.step()
        after = [flat(model.parameters()) for model, _, _ in peers]
        largest_move = (after[0] - before).abs().max().item()
        gap, worst = 0.0, ""
        for i in range(len(peers)):
            for j in range(i):
                difference = (after[i] - after[j]).abs()
                if difference.max().item() > gap:
                    gap = difference.max().item()
                    worst = names[_owner(peers[0][0], int(difference.argmax()))]
        rows.append(dict(step=step, loss=sum(losses) / len(losses), largest_move=largest_move, gap=gap,
                         gap_in_moves=gap / largest_move if largest_move > 0 else 0.0, worst_tensor=worst))
    return rows


def _owner(model: torch.nn.Module, position: int) -> int:
    for index, param in enumerate(model.parameters()):
        if position < param.numel():
            return index
        position -= param.numel()
    raise IndexError(position)


def build_dataset(folder: Path) -> Path:
    path = folder / "dataset"
    subprocess.run([sys.executable, str(REPO_ROOT / "albert/tokenize_wikitext103.py"), "--builtin_corpus",
                    "--builtin_articles", "200", "--tokenizer_name", "none", "--vocab_size", "2000",
                    "--max_seq_length", "128", "--output_path", str(path)], check=True, capture_output=True)
    return path


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(VARIANTS, ("tab:green", "tab:red", "tab:blue")))
    for result in report["runs"]:
        steps = [row["step"] for row in result["rows"]]
        style = dict(color=colors[result["variant"]], alpha=0.8,
                     label=result["variant"] if result["seed"] == report["seeds"][0] else None)
        axes[0].plot(steps, [max(row["gap"], 1e-9) for row in result["rows"]], **style)
        axes[1].plot(steps, [row["gap_in_moves"] for row in result["rows"]], **style)
    axes[0].set(yscale="log", xlabel="global step", ylabel="largest parameter gap between peers")
    axes[1].set(xlabel="global step", ylabel="gap / largest move of the step")
    axes[0].legend()
    figure.suptitle(f"ALBERT-tiny, LAMB, {report['peers']} peers, every round succeeds (seeds {report['seeds']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.output_dir) as folder:
        dataset_path = args.dataset_path or build_dataset(Path(folder))
        dataset, tokenizer = load_pretraining_dataset(dataset_path)
        runs = []
        for variant in args.variants:
            for seed in args.seeds:
                started = time.monotonic()
                rows = run(variant, seed, args, dataset, tokenizer)
                runs.append(dict(variant=variant, seed=seed, rows=rows))
                print(f"{variant:10s} seed {seed}: final gap {rows[-1]['gap']:.2e}, largest "
                      f"{max(row['gap'] for row in rows):.2e}, {time.monotonic() - started:.0f}s", flush=True)
    report = dict(machine=machine_info(), peers=args.peers, steps=args.steps, seeds=args.seeds,
                  batch_size=args.batch_size, learning_rate=args.learning_rate, runs=runs)
    table_rows = []
    for result in runs:
        rows = result["rows"]
        worst = max(rows, key=lambda row: row["gap"])
        table_rows.append([result["variant"], result["seed"], f"{rows[-1]['gap']:.2e}", f"{worst['gap']:.2e}",
                           f"{max(row['gap_in_moves'] for row in rows):.3f}", worst["worst_tensor"]])
    table = markdown_table(["variant", "seed", "final gap", "largest gap", "largest gap / move", "tensor"],
                           table_rows)
    paths = write_results(Path(args.results_dir), args.name, report, table, plot)
    print(table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
