#!/usr/bin/env python3
"""Training overhead: samples/s of a plain local training loop against the project's collaborative trainer alone in
a swarm, same model, batch, optimizer and data, for the ALBERT track (--track albert, the default) or SwAV (--track
swav).

Plain loop (benchmarks/training_overhead_worker.py): the track's model, optimizer (ALBERT: LAMB; SwAV: LARS) and
schedule built by its model.py exactly as its run_trainer.py builds them (SwAV: swav/model.py and swav/data.py's
multi-crop collator, SwavCriterion as the loss), batches from the trainer's own `infinite_batches`, gradients
accumulated over --target_batch_size samples, then one optimizer step. Collaborative: the track's run_trainer.py
itself, the only trainer of a fresh run (its own --run_id) joined to a coordinator (the track's run_first_peer.py,
which a trainer needs as initial peer); hivemind.Optimizer steps once per --target_batch_size samples, so both
variants do the same arithmetic.
Both write the trainer's journal (journal.jsonl): after --warmup_global_steps untimed steps, samples/s is measured
over the next --timed_global_steps, from the journal's "step" events. The CPU time of each variant's processes (the
trainer, its DHT and averager processes, its libp2p daemon) is read from /proc over the same window: on a shared
machine, CPU seconds per sample drift far less than wall time. Runs alternate plain / collaborative (/ the trainer of
--baseline_checkout) --repeats times; each collaborative run is compared with the plain run just before it and the
median of these ratios is reported. The coordinator runs during every variant (the same background for each).
For SwAV the report also gives the bytes averaged per global step (gradients + BatchNorm statistics, at the preset's
compression), computed with hivemind's own partitioning and compression of the model's tensors, for the run's preset
and for the paper's ResNet-50 recipe (swav/configs/swav-resnet50.json).
Writes benchmarks/results/<name>.json, .md and .png (<name>: training_overhead, training_overhead-swav).

    python benchmarks/training_overhead.py                        # albert-tiny as in albert/configs/demo.json
    python benchmarks/training_overhead.py --baseline_checkout /tmp/before   # also an older checkout's trainer
    python benchmarks/training_overhead.py --repeats 1 --timed_global_steps 2                # a quick look
    python benchmarks/training_overhead.py --model_preset albert-large --device cuda --torch_threads 0 \
        --name training_overhead-large                                          # on a GPU machine
    python benchmarks/training_overhead.py --track swav       # SwAV, swav/configs/cpu.json on the Tiny-ImageNet subset
    python benchmarks/training_overhead.py --track swav --trainer_config swav/configs/swav-resnet50.json \
        --target_batch_size 1024 --device cuda --torch_threads 0 --name training_overhead-swav-resnet50  # on a GPU
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, pyplot, summarize, write_results
from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.journal import JOURNAL_FILE, read_journal
from collab.lab.swarm import REPO_ROOT, LocalSwarm, PeerProcess

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WORKER_SCRIPT = "benchmarks/training_overhead_worker.py"
# the SwAV track's default images: the Tiny-ImageNet subset next to the repository (the SwAV tests use it too)
TINY_IMAGENET_TRAIN = REPO_ROOT.parent / "shared" / "data" / "images" / "tiny-imagenet-200-subset" / "train"
SWAV_RECIPE = "swav/configs/swav-resnet50.json"  # the paper's ResNet-50 recipe: its averaged bytes are reported too


@dataclass(frozen=True)
class Track:
    """Where a track's scripts and defaults are: the benchmark is the same for every track."""

    trainer_script: str
    coordinator_script: str
    default_config: str
    default_name: str
    optimizer: str  # its name in the report (one <optimizer> step per target batch)
    extra_flags: tuple[str, ...] = ()  # given to every script of the run, after the preset


TRACKS = {
    "albert": Track("albert/run_trainer.py", "albert/run_first_peer.py", "albert/configs/demo.json",
                    "training_overhead", "LAMB"),
    "swav": Track("swav/run_trainer.py", "swav/run_first_peer.py", "swav/configs/cpu.json",
                  "training_overhead-swav", "LARS"),
}

PLAIN, COLLABORATIVE, BASELINE = "plain", "collaborative", "collaborative-baseline"
PROCESS_KINDS = ("main", "helpers", "p2pd")  # the script's own process; its forked children; libp2p daemons
POLL = 0.25  # seconds between reads of a run's journal and CPU times


@dataclass
class TrainingOverheadArguments:
    track: str = field(
        default="albert",
        metadata=dict(choices=sorted(TRACKS),
                      help="Whose trainer, coordinator and plain loop: albert (albert/run_trainer.py, "
                           "albert/run_first_peer.py) or swav (swav/run_trainer.py, swav/run_first_peer.py)."))
    trainer_config: Optional[str] = field(
        default=None,
        metadata=dict(help="JSON preset both variants are started with (model preset, batch, optimizer, schedule); "
                           "unset: the track's, albert/configs/demo.json or swav/configs/cpu.json."))
    model_preset: Optional[str] = field(
        default=None, metadata=dict(help="The track's model.py preset; unset: the trainer config's (albert-tiny for "
                                         "demo.json, resnet-tiny for cpu.json). albert-large and resnet50 want a "
                                         "GPU (--device cuda)."))
    per_device_train_batch_size: Optional[int] = field(
        default=None, metadata=dict(help="Samples per forward/backward pass; unset: the trainer config's."))
    target_batch_size: Optional[int] = field(
        default=None, metadata=dict(help="Samples per optimizer step (the swarm's global batch); unset: the "
                                         "config's."))
    warmup_global_steps: int = field(default=1, metadata=dict(help="Untimed optimizer steps at the start of each "
                                                                   "run."))
    timed_global_steps: int = field(
        default=8, metadata=dict(help="Optimizer steps timed after the warm-up (x target batch = samples measured)."))
    repeats: int = field(default=3, metadata=dict(help="Pairs of runs, plain then collaborative, one after another."))
    device: str = field(default="cpu", metadata=dict(help="cpu or cuda, for both variants."))
    dataset_path: Optional[str] = field(
        default=None, metadata=dict(help="albert: output of albert/tokenize_wikitext103.py; unset: the demo dataset, "
                                         "built once into <output_dir>-data from the built-in corpus. swav: an image "
                                         "folder (or builtin:digits); unset: the Tiny-ImageNet subset, "
                                         "../shared/data/images/tiny-imagenet-200-subset/train."))
    run_timeout: float = field(default=900.0, metadata=dict(help="A run that takes longer fails the benchmark (s)."))
    output_dir: str = field(default="outputs/training-overhead",
                            metadata=dict(help="Logs and journals of every run."))
    results_dir: str = field(default="benchmarks/results",
                             metadata=dict(help="Where <name>.json, <name>.md and <name>.png are written."))
    name: Optional[str] = field(
        default=None, metadata=dict(help="Base name of the result files; unset: training_overhead (albert), "
                                         "training_overhead-swav (swav)."))
    baseline_checkout: Optional[str] = field(
        default=None,
        metadata=dict(help="Another checkout of this repository (e.g. `git worktree add /tmp/before <commit>`): the "
                           "track's run_trainer.py there runs as a third variant in every repeat, right after this "
                           "checkout's trainer, so that a change is measured before/after side by side."))
    torch_threads: int = field(
        default=1,
        metadata=dict(help="OMP_NUM_THREADS of every process started, the same for both variants. Default 1: on a "
                           "shared machine torch's per-core threads stall at each barrier while another process "
                           "holds a core (steps of the same loop took 1.8-55 s with 2 threads, 1.9-3.0 s with 1). "
                           "0: leave it unset (torch's default, one thread per core)."))

    def __post_init__(self) -> None:
        if self.track not in TRACKS:  # argparse checks the flag; this catches code
            raise UserError(f"--track {self.track!r} is unknown; choose one of {', '.join(sorted(TRACKS))}")
        if self.trainer_config is None:
            self.trainer_config = TRACKS[self.track].default_config
        if self.name is None:
            self.name = TRACKS[self.track].default_name
        if self.warmup_global_steps < 1:
            raise UserError("--warmup_global_steps must be at least 1 (the first step pays for start-up)")
        if self.timed_global_steps < 1 or self.repeats < 1:
            raise UserError("--timed_global_steps and --repeats must be at least 1")
        if not (REPO_ROOT / self.trainer_config).is_file() and not Path(self.trainer_config).is_file():
            raise UserError(f"--trainer_config {self.trainer_config}: no such file")
        script = TRACKS[self.track].trainer_script
        if self.baseline_checkout is not None and not (Path(self.baseline_checkout) / script).is_file():
            raise UserError(f"--baseline_checkout {self.baseline_checkout}: no {script} there")

    @property
    def variants(self) -> tuple[str, ...]:
        return (PLAIN, COLLABORATIVE) + ((BASELINE,) if self.baseline_checkout else ())


# ------------------------------------------------------------------------------------------- CPU time from /proc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds of the process and of its children it has waited for)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5), the state
        ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        table[int(entry.name)] = (int(fields[1]), name, ticks / CLOCK_TICKS)
    return table


def process_tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of `root` and every process below it, each labelled with its kind (PROCESS_KINDS)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid not in table:
            continue
        _, name, seconds = table[pid]
        tree[pid] = ("main" if pid == root else "p2pd" if name == "p2pd" else "helpers", seconds)
        todo += children.get(pid, [])
    return tree


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used between two snapshots, by kind (a process born in between counts from zero)."""
    used = {kind: 0.0 for kind in PROCESS_KINDS}
    for pid, (kind, seconds) in after.items():
        used[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    used["total"] = sum(used[kind] for kind in PROCESS_KINDS)
    return used


# ------------------------------------------------------------------------------------------- runs


def window_rate(events: list[dict], first_step: int, last_step: int) -> dict:
    """Samples/s between two "step" events of a journal (the samples computed in between, over the time)."""
    steps = {event["step"]: event for event in events if event["event"] == "step"}
    missing = [step for step in (first_step, last_step) if step not in steps]
    if missing:
        raise ValueError(f"the journal has no step event for step(s) {missing}")
    start, end = steps[first_step], steps[last_step]
    samples, seconds = end["samples_computed"] - start["samples_computed"], end["time"] - start["time"]
    step_seconds = [steps[step]["time"] - steps[step - 1]["time"] for step in range(first_step + 1, last_step + 1)
                    if step in steps and step - 1 in steps]
    return dict(samples=samples, seconds=seconds, samples_per_second=samples / seconds, step_seconds=step_seconds)


class Benchmark:
    def __init__(self, args: TrainingOverheadArguments, output_dir: Path, dataset_path: Path):
        self.args, self.output_dir, self.dataset_path = args, output_dir, dataset_path
        self.track = TRACKS[args.track]
        self.first_step = args.warmup_global_steps
        self.last_step = args.warmup_global_steps + args.timed_global_steps
        config = REPO_ROOT / args.trainer_config if (REPO_ROOT / args.trainer_config).is_file() else Path(
            args.trainer_config)
        self.common = ["--config", str(config.resolve()), "--dataset_path", str(dataset_path), "--device",
                       args.device, "--max_steps", str(self.last_step), *self.track.extra_flags]
        for flag in ("model_preset", "per_device_train_batch_size", "target_batch_size"):
            if getattr(args, flag) is not None:
                self.common += [f"--{flag}", str(getattr(args, flag))]
        self.coordinator: Optional[PeerProcess] = None
        self.initial_peers: list[str] = []

    def run(self) -> dict:
        env = dict(OMP_NUM_THREADS=str(self.args.torch_threads)) if self.args.torch_threads else {}
        with LocalSwarm(self.output_dir / "logs", env=env) as swarm:
            self.start_coordinator(swarm)
            runs = []
            for repeat in range(self.args.repeats):
                for variant in self.args.variants:
                    runs.append(self.run_one(swarm, variant, repeat))
                    logger.info(f"Run {len(runs)} ({variant}): {runs[-1]['samples_per_second']:.2f} samples/s, "
                                f"{runs[-1]['cpu_seconds']['total']:.1f} CPU s over {runs[-1]['samples']} samples")
        return dict(runs=runs)

    def start_coordinator(self, swarm: LocalSwarm) -> None:
        folder = self.output_dir / "coordinator"
        self.coordinator = swarm.start("coordinator", self.track.coordinator_script, self.common + [
            "--run_id", f"overhead{os.getpid()}coordinator", "--host_maddrs", "/ip4/127.0.0.1/tcp/0",
            "--identity_path", str(self.output_dir / "coordinator.id"), "--monitor_output_dir", str(folder),
            "--save_checkpoint_step_interval", "0", "--wandb_mode", "disabled"])
        self.initial_peers = swarm.wait_for_file(folder / "initial_peers.txt", self.args.run_timeout,
                                                 watch=[self.coordinator]).split()

    def start_variant(self, swarm: LocalSwarm, variant: str, name: str, run_dir: Path) -> PeerProcess:
        extra = ["--output_dir", str(run_dir)]
        if variant == PLAIN:
            return swarm.start(name, WORKER_SCRIPT, ["--track", self.args.track] + self.common + extra)
        # the trainer of this checkout or of the baseline one (an absolute path: LocalSwarm joins it as it is)
        trainer = self.track.trainer_script
        script = trainer if variant == COLLABORATIVE else str(Path(self.args.baseline_checkout).resolve() / trainer)
        # a fresh run id: no record of an earlier run's trainer is in the DHT
        return swarm.start(name, script, self.common + extra + self.initial_peers + [
            "--run_id", f"overhead{os.getpid()}{variant.replace('-', '')}{name.rsplit('-', 1)[1]}"])

    def run_one(self, swarm: LocalSwarm, variant: str, repeat: int) -> dict:
        name = f"{variant}-{repeat + 1}"
        run_dir = self.output_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)
        process = self.start_variant(swarm, variant, name, run_dir)
        load_average = os.getloadavg()
        started = time.monotonic()
        snapshots: dict[int, tuple] = {}  # step -> (process CPU, coordinator CPU) when its event was seen
        while self.last_step not in snapshots:
            if not process.alive:
                raise RuntimeError(f"{name} exited with code {process.popen.returncode} before step {self.last_step}; "
                                   f"last lines of {process.log_path}:\n{process.log_tail()}")
            if not self.coordinator.alive:
                raise RuntimeError(f"the coordinator exited; last lines of {self.coordinator.log_path}:\n"
                                   f"{self.coordinator.log_tail()}")
            if time.monotonic() - started > self.args.run_timeout:
                raise TimeoutError(f"{name} did not reach step {self.last_step} in {self.args.run_timeout:.0f}s; see "
                                   f"{process.log_path}")
            steps = {event["step"] for event in read_journal(run_dir / JOURNAL_FILE) if event["event"] == "step"}
            for step in (self.first_step, self.last_step):
                if step in steps and step not in snapshots:
                    snapshots[step] = (process_tree_cpu(process.popen.pid),
                                       process_tree_cpu(self.coordinator.popen.pid))
            time.sleep(POLL)
        swarm.stop(process)  # a trainer would now wait for others to agree on a final state: not measured
        events = read_journal(run_dir / JOURNAL_FILE)
        rate = window_rate(events, self.first_step, self.last_step)
        (cpu_start, coordinator_start), (cpu_end, coordinator_end) = (snapshots[self.first_step],
                                                                      snapshots[self.last_step])
        cpu = cpu_between(cpu_start, cpu_end)
        return dict(variant=variant, repeat=repeat + 1, **rate, cpu_seconds=cpu,
                    cpu_ms_per_sample={kind: 1000 * value / rate["samples"] for kind, value in cpu.items()},
                    coordinator_cpu_seconds=cpu_between(coordinator_start, coordinator_end)["total"],
                    rounds_scheduled=sum(event["event"] == "round_scheduled" for event in events),
                    load_average_at_start=load_average, run_seconds=time.monotonic() - started,
                    log=str(process.log_path), journal=str(run_dir / JOURNAL_FILE))


# ------------------------------------------------------------------------------------------- report


def analyse(runs: list[dict]) -> dict:
    """Per variant: samples/s and CPU per sample; per collaborative variant: its runs against the plain run of the
    same repeat (adjacent in time), as ratios whose median is the headline."""
    variants = list(dict.fromkeys(run["variant"] for run in runs))
    by_repeat = {(run["variant"], run["repeat"]): run for run in runs}
    result = dict(variants={}, ratios={})
    for variant in variants:
        chosen = [run for run in runs if run["variant"] == variant]
        result["variants"][variant] = dict(
            samples_per_second=summarize([run["samples_per_second"] for run in chosen]),
            cpu_ms_per_sample={kind: statistics.median(run["cpu_ms_per_sample"][kind] for run in chosen)
                               for kind in (*PROCESS_KINDS, "total")},
            step_seconds=summarize([seconds for run in chosen for seconds in run["step_seconds"]]),
        )
        if variant == PLAIN:
            continue
        pairs = [(by_repeat[(PLAIN, run["repeat"])], run) for run in chosen if (PLAIN, run["repeat"]) in by_repeat]
        speed = [run["samples_per_second"] / plain["samples_per_second"] for plain, run in pairs]
        # /proc counts CPU time in clock ticks (10 ms): a tiny run (the smoke test) can show a plain loop at 0
        cpu = [run["cpu_ms_per_sample"]["total"] / plain["cpu_ms_per_sample"]["total"] for plain, run in pairs
               if plain["cpu_ms_per_sample"]["total"] > 0]
        result["ratios"][variant] = dict(
            speed_ratios=speed, cpu_ratios=cpu, median_speed_ratio=statistics.median(speed),
            median_cpu_ratio=statistics.median(cpu) if cpu else float("nan"),
            overhead_percent=100 * (1 / statistics.median(speed) - 1))
    return result


def table(report: dict) -> str:
    result = report["result"]
    summary_rows = []
    for variant, values in result["variants"].items():
        speed, cpu = values["samples_per_second"], values["cpu_ms_per_sample"]
        row = [variant, f"{speed['median']:.2f} ({speed['min']:.2f}-{speed['max']:.2f})",
               " / ".join(f"{cpu[kind]:.1f}" for kind in PROCESS_KINDS) + f" = {cpu['total']:.1f}"]
        ratios = result["ratios"].get(variant)
        if ratios is None:
            row += ["1", "1"]
        else:
            row += [f"**{ratios['median_speed_ratio']:.3f}** ({', '.join(f'{r:.3f}' for r in ratios['speed_ratios'])})",
                    f"{ratios['median_cpu_ratio']:.3f} ({', '.join(f'{r:.3f}' for r in ratios['cpu_ratios'])})"]
        summary_rows.append(row)
    summary = markdown_table(["variant", "samples/s median (min-max)",
                              "CPU ms per sample, median: main / helpers / p2pd = total",
                              "samples/s / plain's, median (each pair)",
                              "CPU per sample / plain's, median (each pair)"],
                             summary_rows)
    header = ["run", "variant", "samples", "seconds", "samples/s", "CPU ms/sample: main", "helpers", "p2pd", "total",
              "coordinator CPU s", "rounds scheduled", "load avg at start"]
    rows = [[index, run["variant"], run["samples"], f"{run['seconds']:.1f}", f"{run['samples_per_second']:.2f}",
             *(f"{run['cpu_ms_per_sample'][kind]:.1f}" for kind in (*PROCESS_KINDS, "total")),
             f"{run['coordinator_cpu_seconds']:.1f}", run["rounds_scheduled"],
             f"{run['load_average_at_start'][0]:.1f}"] for index, run in enumerate(report["runs"], 1)]
    return summary + "\n\n" + markdown_table(header, rows)


COLORS = {PLAIN: "tab:blue", COLLABORATIVE: "tab:orange", BASELINE: "tab:gray"}


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = list(range(1, len(runs) + 1))
    colors = [COLORS[run["variant"]] for run in runs]
    left.bar(positions, [run["samples_per_second"] for run in runs], color=colors)
    left.set_xticks(positions, [str(index) for index in positions])
    left.set_xlabel("run, in the order run")
    left.set_ylabel("samples/s over the timed steps")
    ratios = report["result"]["ratios"]
    left.set_title("samples/s; median / plain: " + ", ".join(f"{variant} {values['median_speed_ratio']:.2f}"
                                                             for variant, values in ratios.items()), fontsize=9)
    bottom = [0.0] * len(runs)
    for kind, hatch in zip(PROCESS_KINDS, ("", "//", "..")):
        values = [run["cpu_ms_per_sample"][kind] for run in runs]
        right.bar(positions, values, bottom=bottom, color=colors, hatch=hatch, edgecolor="black", linewidth=0.5,
                  label=kind)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set_xticks(positions, [str(index) for index in positions])
    right.set_xlabel("run")
    right.set_ylabel("CPU ms per sample (the variant's processes)")
    right.set_title("CPU per sample: main process, helper processes (DHT, averagers), p2pd", fontsize=9)
    from matplotlib.patches import Patch

    right.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatch, label=kind)
                          for kind, hatch in zip(PROCESS_KINDS, ("", "//", ".."))], fontsize=8)
    legend = ", ".join(f"{color.split(':')[1]}: {variant}" for variant, color in COLORS.items()
                       if any(run["variant"] == variant for run in runs))
    optimizer = TRACKS[report["settings"].get("track", "albert")].optimizer
    fig.suptitle(f"{report['model_preset']}, {report['per_device_train_batch_size']} samples per pass, "
                 f"{report['target_batch_size']} per {optimizer} step, {report['settings']['device']}, "
                 f"{report['machine']['cpus_usable']} cores ({legend})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _config_path(trainer_config: str) -> Path:
    return REPO_ROOT / trainer_config if (REPO_ROOT / trainer_config).is_file() else Path(trainer_config)


def _track_arguments(track: str, argv: list[str]) -> tuple:
    """The track's argument groups parsed as its trainer parses them: (track, peer, collab, averager, tracker,
    training)."""
    if track == "swav":
        from swav.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS

        return parse_arguments(ARGUMENT_GROUPS, argv, preset_shared_with=COORDINATOR_GROUPS)
    from albert.arguments import ARGUMENT_GROUPS

    return parse_arguments(ARGUMENT_GROUPS, argv)


def _override_flags(args: TrainingOverheadArguments) -> list[str]:
    flags = list(TRACKS[args.track].extra_flags)
    for flag in ("model_preset", "per_device_train_batch_size", "target_batch_size"):
        if getattr(args, flag) is not None:
            flags += [f"--{flag}", str(getattr(args, flag))]
    return flags


def resolved_settings(args: TrainingOverheadArguments, dataset_path: Path | str) -> dict:
    """Model preset and batch sizes both variants actually use (flags over the trainer config)."""
    config = _config_path(args.trainer_config)
    argv = ["--config", str(config), "--dataset_path", str(dataset_path)] + _override_flags(args)
    track, _, collab, _, _, training = _track_arguments(args.track, argv)
    return dict(model_preset=track.model_preset, per_device_train_batch_size=training.per_device_train_batch_size,
                target_batch_size=collab.target_batch_size, trainer_config=json.loads(config.read_text()))


# ------------------------------------------------------------------------------------------- averaged bytes (SwAV)

GROUP_SIZES = (2, 4, 8)  # all-reduce groups the bytes sent per peer are given for


def averaged_bytes(parameters: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor], compression: str) -> dict:
    """What one peer puts into the gradient all-reduce of every global step: one gradient per parameter, then the
    averaged buffers (collab.optimizer.RoleGradientAverager), split into parts and compressed exactly as hivemind's
    TensorPartContainer does (parts of DEFAULT_PART_SIZE_BYTES after compression, the compression chosen per tensor
    from the whole tensor's CompressionInfo, so that size-adaptive compression picks fp16 or 8-bit by tensor size),
    each part serialized to its protobuf message. Computed, not measured on a wire: the wire adds the stream's
    framing (a few bytes per part, group id and peer id in the first message). Values do not change the sizes of
    fp16 or 8-bit parts; gradients are drawn from a normal distribution, buffers are the model's own."""
    import torch
    from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES, TensorPartContainer
    from hivemind.compression import CompressionInfo
    from hivemind.compression.adaptive import AdaptiveCompressionBase

    from benchmarks.averaging import allreduce_bytes_per_peer
    from collab.optimizer import make_compression

    codec = make_compression(compression)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(param.shape, generator=generator) for param in parameters]
    tensors += [buffer.detach().float().cpu().clone() for buffer in buffers]
    payload, parts, values_by_codec = 0, 0, {}
    num_parts_by_tensor = []
    with torch.no_grad():
        for index, tensor in enumerate(tensors):
            info = CompressionInfo.from_tensor(tensor, key=index)
            chosen = codec.choose_compression(info) if isinstance(codec, AdaptiveCompressionBase) else codec
            name = type(chosen).__name__
            values_by_codec[name] = values_by_codec.get(name, 0) + tensor.numel()
            part_size_values = int(DEFAULT_PART_SIZE_BYTES / (tensor.element_size()
                                                              * codec.estimate_compression_ratio(info)))
            tensor_parts = tensor.view(-1).split(part_size_values)
            num_parts_by_tensor.append(len(tensor_parts))
            for part_index, part in enumerate(tensor_parts):
                payload += codec.compress(part, info.get_part(part_index, part_size_values)).ByteSize()
                parts += 1
    # the same split as hivemind's own container (a check that this mirrors the pinned hivemind)
    container = TensorPartContainer(tensors, peer_fractions=(1.0,), compression=codec)
    if list(container.num_parts_by_tensor) != num_parts_by_tensor:
        raise RuntimeError("hivemind splits the averaged tensors differently than this benchmark assumes")
    gradient_values = sum(param.numel() for param in parameters)
    buffer_values = sum(buffer.numel() for buffer in buffers)
    values = gradient_values + buffer_values
    return dict(
        compression=compression, gradient_tensors=len(parameters), buffer_tensors=len(buffers),
        gradient_values=gradient_values, buffer_values=buffer_values, values=values, fp32_bytes=4 * values,
        payload_bytes=payload, parts=parts, bytes_per_value=payload / values, values_by_codec=values_by_codec,
        sent_per_peer_bytes={str(n): allreduce_bytes_per_peer(1, n, payload) for n in GROUP_SIZES},
    )


def swav_averaged_bytes(config: Path, flags: Sequence[str] = ()) -> dict:
    """averaged_bytes of the SwAV model and compression a preset (and flags) give, built as swav/run_trainer.py
    builds them: every parameter's gradient, then swav.model.averaged_buffers (BatchNorm running statistics)."""
    from swav.model import averaged_buffers, build_model, model_config

    swav, _, collab, _, _, _ = _track_arguments("swav", ["--config", str(config), *flags])
    model = build_model(model_config(swav.model_preset, swav.hidden_dim, swav.feature_dim, swav.num_prototypes))
    return dict(config=str(config.relative_to(REPO_ROOT)) if config.is_relative_to(REPO_ROOT) else str(config),
                model_preset=swav.model_preset,
                **averaged_bytes(list(model.parameters()), averaged_buffers(model), collab.compression))


def averaged_bytes_table(rows: Sequence[dict]) -> str:
    header = ["preset", "model", "compression", "tensors averaged: gradients + BatchNorm statistics",
              "values (gradients + statistics)", "fp32 (MB)", "averaged per peer, serialized (MB)", "bytes per value",
              f"sent per peer per global step, {' / '.join(map(str, GROUP_SIZES))} peers (MB)"]
    body = [[row["config"], row["model_preset"], row["compression"],
             f"{row['gradient_tensors']} + {row['buffer_tensors']}",
             f"{row['values']:,} ({row['gradient_values']:,} + {row['buffer_values']:,})",
             f"{row['fp32_bytes'] / 1e6:.3f}", f"{row['payload_bytes'] / 1e6:.3f}", f"{row['bytes_per_value']:.3f}",
             " / ".join(f"{row['sent_per_peer_bytes'][str(n)] / 1e6:.3f}" for n in GROUP_SIZES)] for row in rows]
    return markdown_table(header, body)


def main(argv: Optional[list[str]] = None) -> None:
    setup_logging()
    (args,) = parse_arguments((TrainingOverheadArguments,), argv, description=__doc__)
    machine = machine_info()
    output_dir = Path(args.output_dir).resolve()
    if args.track == "swav":
        dataset_path = swav_dataset_path(args.dataset_path)
    elif args.dataset_path is None:
        from albert.run_demo import prepare_data

        dataset_path = output_dir.parent / f"{output_dir.name}-data"
        prepare_data(dataset_path)
    else:
        dataset_path = Path(args.dataset_path).resolve()
    settings = resolved_settings(args, dataset_path)
    extra = {}
    if args.track == "swav":  # before the runs: a preset that cannot be built fails at once
        config = _config_path(args.trainer_config).resolve()
        rows = [swav_averaged_bytes(config, _override_flags(args))]
        if config != (REPO_ROOT / SWAV_RECIPE).resolve():
            rows.append(swav_averaged_bytes(REPO_ROOT / SWAV_RECIPE, TRACKS["swav"].extra_flags))
        extra = dict(track="swav", averaged_bytes=rows)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    raw = Benchmark(args, output_dir, dataset_path).run()
    report = dict(benchmark="training_overhead", machine=machine, settings=vars(args), **settings, **extra,
                  samples_timed=args.timed_global_steps * settings["target_batch_size"], runs=raw["runs"],
                  result=analyse(raw["runs"]))
    markdown = table(report)
    if "averaged_bytes" in report:
        markdown += ("\n\nBytes averaged per global step (gradients + BatchNorm statistics), computed with hivemind's "
                     "partitioning and compression:\n\n" + averaged_bytes_table(report["averaged_bytes"]))
    paths = write_results(Path(args.results_dir), args.name, report, markdown, plot)
    print(markdown)
    print(f"\nReport: {paths[0]}, plot: {paths[2]}, logs: {output_dir / 'logs'}")


def swav_dataset_path(value: Optional[str]) -> Path | str:
    """The SwAV track's --dataset_path: the Tiny-ImageNet subset when unset; builtin:digits and hub ids as given."""
    if value is None:
        if not TINY_IMAGENET_TRAIN.is_dir():
            raise UserError(f"the Tiny-ImageNet subset is not at {TINY_IMAGENET_TRAIN}; pass --dataset_path (an image "
                            f"folder, or builtin:digits)")
        return TINY_IMAGENET_TRAIN
    if value == "builtin:digits" or not Path(value).expanduser().exists():
        return value  # the trainer explains a missing folder or loads a hub id
    return Path(value).expanduser().resolve()


if __name__ == "__main__":
    run_main(main)
