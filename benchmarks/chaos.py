#!/usr/bin/env python3
"""Chaos benchmark: an ALBERT swarm on this machine whose peers are killed (SIGKILL) and restarted at random.

Starts a coordinator, an auxiliary peer and trainers (albert-tiny, built-in corpus, CPU, offline) that train to
--max_steps; kills and restarts random peers until --settle_steps before the end (some kills timed to land inside
averaging rounds, the coordinator included), lets one trainer inject non-finite losses and gradients and a peer
with incompatible settings try to join; the run then ends with one agreed final state. Last, the whole swarm is
restarted from the coordinator's checkpoint after the newest one was corrupted. Writes the report as JSON, a
markdown table and a PNG plot (global step over time with every kill marked). See collab/lab/chaos.py.

    python benchmarks/chaos.py                          # the committed run (about 10 minutes on 2 cores)
    python benchmarks/chaos.py --max_steps 20 --seed 3  # a quick look
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.chaos import ChaosRun, ChaosSettings
from collab.lab.faults import FaultPlan
from collab.lab.recipes import albert_recipe

logger = logging.getLogger(__name__)


@dataclass
class ChaosArguments:
    max_steps: int = field(default=60, metadata=dict(help="Global steps of the run (the trainers' --max_steps)."))
    settle_steps: int = field(default=8, metadata=dict(help="No faults during the last this many global steps."))
    duration: float = field(default=900.0, metadata=dict(help="Chaos stops after this many seconds at the latest."))
    num_trainers: int = field(default=3, metadata=dict(help="Trainer processes."))
    kill_interval_min: float = field(default=20.0, metadata=dict(help="Shortest pause between two kills (s)."))
    kill_interval_max: float = field(default=40.0, metadata=dict(help="Longest pause between two kills (s)."))
    round_kill_fraction: float = field(
        default=0.5, metadata=dict(help="Share of trainer kills timed to land inside a gradient-averaging round."))
    coordinator_kill_fraction: float = field(default=0.15, metadata=dict(help="Share of kills aimed at the coordinator."))
    aux_kill_fraction: float = field(default=0.15, metadata=dict(help="Share of kills aimed at the auxiliary peer."))
    faults: str = field(default=ChaosSettings.faulty_trainer_faults,
                        metadata=dict(help="Faults of trainer-1, KIND@START+COUNT,... (see collab/lab/faults.py); empty for none."))
    seed: int = field(default=0, metadata=dict(help="Seed of the kill schedule."))
    output_dir: str = field(default="outputs/chaos", metadata=dict(help="Logs, journals, checkpoints of the run."))
    results_dir: str = field(default="benchmarks/results",
                             metadata=dict(help="Where NAME.json, NAME.md and NAME.png are written."))
    name: str = field(default="chaos", metadata=dict(help="File name of the results (without extension)."))
    target_batch_size: int = field(default=1024, metadata=dict(help="Samples per global step (albert-tiny)."))

    def __post_init__(self) -> None:
        if self.num_trainers < 2:
            raise UserError("--num_trainers must be at least 2: with one trainer there is nobody to agree with")
        if not 0 < self.kill_interval_min <= self.kill_interval_max:
            raise UserError("--kill_interval_min must be positive and at most --kill_interval_max")
        if not 0 < self.settle_steps < self.max_steps:
            raise UserError("--settle_steps must be positive and smaller than --max_steps")
        if any(not 0 <= share <= 1 for share in (self.round_kill_fraction, self.coordinator_kill_fraction,
                                                 self.aux_kill_fraction)):
            raise UserError("the kill fractions are shares between 0 and 1")
        FaultPlan.parse(self.faults)  # a bad plan is a one-line error now, not a trainer crash later


def markdown_table(report: dict) -> str:
    rows = [
        ("chaos duration (s)", report["duration_s"]),
        ("trainers / aux peer", f"{report['trainers']} / {'yes' if report['aux'] else 'no'}"),
        ("kills (trainer / aux / coordinator)", f"{report['kills']} ({report['kills_by_role']['trainer']} / "
         f"{report['kills_by_role']['aux']} / {report['kills_by_role']['coordinator']})"),
        ("kills timed inside an averaging round", report["kills_inside_rounds"]),
        ("kills survived (swarm stepped again within the bound)", f"{report['kills_survived']} of {report['kills']}"),
        ("global steps reached", report["global_steps"]),
        ("global steps taken while the coordinator was down", report["steps_while_coordinator_down"]),
        ("coordinator after its restart: steps recorded / checkpoints saved",
         f"{report['coordinator_steps_recorded_after_restart']} / {report['coordinator_checkpoints_after_restart']}"),
        ("longest wait for the next global step (s)", report["longest_wait_for_a_step_s"]),
        ("peer incarnations whose step went backwards", report["non_monotone_peers"]),
        ("trainer rounds averaged / failed / alone", f"{report['rounds_averaged']} / {report['rounds_failed']} / "
         f"{report['rounds_alone']}"),
        ("samples wasted", f"{100 * report['wasted_fraction']:.1f}% of {report['samples_computed']}"
         if report["wasted_fraction"] is not None else "n/a"),
        ("trainer restarts: rejoined / expected to (not refused, not killed again first)",
         f"{report['trainer_restarts_rejoined']} / {report['trainer_restarts_expected_to_rejoin']} "
         f"(of {report['trainer_restarts']})"),
        ("starts refused while the coordinator was down (one-line error, restarted)",
         report["starts_refused_while_coordinator_down"]),
        ("rejoin: restart to state downloaded, median / p95 (s)",
         f"{report['rejoin_s_median']} / {report['rejoin_s_p95']}"),
        ("rejoin: restart to first contribution, median / p95 (s)",
         f"{report['first_contribution_s_median']} / {report['first_contribution_s_p95']}"),
        ("parameter divergence between live peers, max / median", f"{_fmt(report['max_divergence'])} / "
         f"{_fmt(report['median_divergence'])}"),
        ("divergence between trainers in sync (outside repair windows), max / median",
         f"{_fmt(report.get('max_divergence_in_sync'))} / {_fmt(report.get('median_divergence_in_sync'))}"),
        ("pairs beyond the fp16 bound not found by the value check", report.get("one_model_violations", "n/a")),
        ("out-of-sync verdicts / re-syncs", f"{report.get('out_of_sync_verdicts', 'n/a')} / "
         f"{report.get('resyncs', 'n/a')}"),
        ("final checkpoints: steps / max distance between trainers",
         f"{sorted(set(report['final_states']['checkpoint_steps'].values()))} / "
         f"{_fmt(report['final_states']['max_distance'])}"),
        ("trainer exit codes at the end", report["final_states"]["exit_codes"]),
        ("peers that crashed on their own", len(report["crashes"])),
        ("checkpoints written / verified on disk", f"{report['checkpoints_written']} / {report['checkpoints_verified']}"),
        ("corrupted checkpoints found", ", ".join(report["checkpoints_corrupted"]) or "none"),
        ("non-finite parameters seen", report["nonfinite_values"]),
        ("injected non-finite losses / gradient steps", f"{report['injected_nonfinite_losses']} / "
         f"{report['injected_nonfinite_gradients']}"),
        ("incompatible peer", f"exit {report['incompatible_exit_code']}: {report['incompatible_last_line']}"),
    ]
    if "restart_expected_step" in report:
        rows += [
            ("whole-swarm restart: skipped corrupted checkpoint", report["restart_skipped_corrupted"]),
            ("whole-swarm restart: resumed at (expected)", f"{report['restart_joined_steps']} "
             f"({report['restart_expected_step']})"),
            ("whole-swarm restart: parameters / optimizer equal to the checkpoint",
             f"{_fmt(report['restart_probe_distance'])} / {report['restart_optimizer_match']}"),
            ("whole-swarm restart: steps trained after it, final distance",
             f"{report['restart_resumed_steps']}, {_fmt(report['restart_final_states']['max_distance'])}"),
        ]
    return "\n".join(["| measure | value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted((t, int(step)) for step, t in report["step_times"].items())
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    top.step([t for t, _ in steps], [s for _, s in steps], where="post", color="black", label="global step")
    colors = dict(trainer="tab:red", aux="tab:purple", coordinator="tab:orange")
    for kill in report["kill_log"]:
        role = kill["victim"].split("-")[0]
        top.axvline(kill["time"], color=colors[role], linestyle="--" if kill["timed_to_round"] else ":", alpha=0.8)
    for role, color in colors.items():
        top.plot([], [], color=color, linestyle=":", label=f"{role} killed")
    top.plot([], [], color="gray", linestyle="--", label="killed inside a round")
    phases = report["phases"]
    if "settle" in phases:
        top.axvspan(phases["settle"], phases.get("restart", phases["settle"]), color="tab:green", alpha=0.1,
                    label="no faults: run ends")
    top.set_ylabel("global step")
    top.legend(loc="upper left", fontsize=8)
    top.set_title("Chaos run: global step while peers are killed and restarted")
    divergence = sorted((report["step_times"].get(step), value) for step, value in report["divergence_by_step"].items()
                        if step in report["step_times"])
    bottom.semilogy([t for t, _ in divergence], [max(v, 1e-12) for _, v in divergence], ".", color="tab:blue")
    bottom.set_ylabel("max |Δθ| probe")
    bottom.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    (args,) = parse_arguments((ChaosArguments,), argv, description=__doc__)
    from albert.run_demo import prepare_data

    output_dir = Path(args.output_dir).resolve()
    data_dir = output_dir.parent / "chaos-data"
    prepare_data(data_dir)
    settings = ChaosSettings(
        duration=args.duration, num_trainers=args.num_trainers, seed=args.seed, max_steps=args.max_steps,
        settle_steps=args.settle_steps,
        kill_interval=(args.kill_interval_min, args.kill_interval_max), round_kill_fraction=args.round_kill_fraction,
        coordinator_kill_fraction=args.coordinator_kill_fraction, aux_kill_fraction=args.aux_kill_fraction,
        faulty_trainer_faults=args.faults,
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    report = ChaosRun(albert_recipe(data_dir, args.target_batch_size), settings, output_dir).run()
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    table = markdown_table(report)
    (results / f"{args.name}.md").write_text(table + "\n")
    plot(report, results / f"{args.name}.png")
    print(table)
    print(f"\nReport: {results / f'{args.name}.json'}, plot: {results / f'{args.name}.png'}, logs: {output_dir / 'logs'}")


if __name__ == "__main__":
    run_main(main)
