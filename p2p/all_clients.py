#!/usr/bin/env python3
"""Scenario 5, a public run: every volunteer is in client mode, and one joins late.

The normal shape of a public collaboration (Colab, Kaggle, home routers): no trainer accepts connections, so no
trainer can serve the training state. The coordinator does (collab.follower: it takes part in every round with
weight zero, applies the same step, and serves its state), next to an auxiliary peer that helps reduce. Builds
a lab with two public hosts, `coord` (the coordinator) and `helper` (an aux peer), and three client-mode
trainers behind two home routers: `laptop1` and `laptop2` behind `home1`, and `laptop3` behind `home2`, which
joins only once the swarm has reached global step --join_at. Checks, from the journals and the coordinator:
  - the late volunteer downloaded the swarm's current state when it joined (from the coordinator: nobody else
    can serve it), and held the swarm's model from its first contribution on;
  - every trainer held one model after every step (within the fp16 bound, or re-synced within 2 steps);
  - the run ends with one model on every trainer, taken from the coordinator;
  - the coordinator saved checkpoints of that model.
Writes report.json; exit 1 if a check fails. Needs root.

    sudo .venv/bin/python p2p/all_clients.py
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.checkpoints import latest_valid_checkpoint
from collab.cli import run_main, setup_logging
from collab.errors import UserError
from collab.lab.netlab import NetworkLab
from p2p.scenario import AlbertLabArguments, AlbertLabSwarm, ScenarioArguments, conclude, prepare_output, \
    print_rounds, swarm_checks

logger = logging.getLogger(__name__)

HOMES = {"laptop1": "home1", "laptop2": "home1", "laptop3": "home2"}
LATE = "laptop3"


@dataclass
class AllClientsArguments:
    join_at: int = field(default=3, metadata=dict(help="Global step the swarm has reached when the late volunteer "
                                                      "joins."))


def wait_for_step(swarm: AlbertLabSwarm, names: list[str], step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(max(swarm.steps(name), default=0) >= step for name in names):
        if time.monotonic() > deadline:
            raise UserError(f"the swarm did not reach global step {step} within {timeout:.0f} s")
        time.sleep(0.5)


def late_join(swarm: AlbertLabSwarm) -> dict:
    """What the late volunteer's journal says about its join and its first contribution."""
    events = swarm.journal(LATE)
    joined = next((e for e in events if e["event"] == "state" and e["reason"] == "joined"), {})
    steps = swarm.steps(LATE)
    return dict(joined_at=joined.get("step"), downloaded=joined.get("downloaded"),
                first_contribution=min(steps, default=None))


def run(args: ScenarioArguments, albert: AlbertLabArguments, scenario: AllClientsArguments) -> dict:
    if not 1 <= scenario.join_at < albert.max_steps - 1:
        raise UserError(f"--join_at must be between 1 and --max_steps - 2 ({albert.max_steps - 2})")
    output_dir = prepare_output(args, "all_clients")
    with NetworkLab() as lab:
        lab.add_public_host("coord")
        lab.add_public_host("helper")
        for router in sorted(set(HOMES.values())):
            lab.add_router(router)
        for laptop, router in HOMES.items():
            lab.add_private_host(laptop, router)
        with AlbertLabSwarm(lab, albert, output_dir, run_id="lab_all_clients") as swarm:
            swarm.start_coordinator("coord", ["--save_checkpoint_step_interval", "2"])
            swarm.start_aux("helper")
            early = [name for name in HOMES if name != LATE]
            for laptop in early:
                swarm.start_trainer(laptop, laptop, ["--client_mode"])
            print(f"Training {albert.max_steps} steps: {len(early)} client-mode trainers behind NAT, the coordinator "
                  f"and an aux peer on public hosts; {LATE} joins at step {scenario.join_at} "
                  f"(logs in {output_dir / 'logs'})", flush=True)
            wait_for_step(swarm, early, scenario.join_at, albert.timeout)
            swarm.start_trainer(LATE, LATE, ["--client_mode"])
            swarm.wait_until_trained()
    names = list(HOMES)
    report = dict(scenario="all_clients", late_join=late_join(swarm),
                  coordinator_checkpoints=[row["step"] for row in swarm.store()["checkpoints"]],
                  **swarm_checks(swarm, checked=names[1:], reference=names[0]))
    join = report["late_join"]
    newest = latest_valid_checkpoint(output_dir / "coordinator" / "checkpoints")
    report["checks"].update({
        f"{LATE} downloaded the swarm's state when it joined (at step {join['joined_at']})":
            bool(join["downloaded"]) and (join["joined_at"] or 0) >= scenario.join_at,
        f"{LATE} contributed from step {join['first_contribution']} on": join["first_contribution"] is not None,
        "the coordinator saved checkpoints of the swarm's model": newest is not None
            and len(report["coordinator_checkpoints"]) >= 2,
    })
    return conclude(output_dir, report, show=print_rounds)


def main() -> None:
    setup_logging()
    args, albert, scenario = parse_arguments([ScenarioArguments, AlbertLabArguments, AllClientsArguments],
                                             description=__doc__)
    if not run(args, albert, scenario)["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
