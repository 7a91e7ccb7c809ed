#!/usr/bin/env python3
"""Scenario 4, auxiliary peer: a public CPU helper makes averaging possible for trainers that are all behind NAT.

Client-mode trainers cannot connect to each other, so a swarm of them alone cannot average anything (hivemind
needs at least one peer that accepts connections to reduce the others' parts). Builds a lab with two public
hosts, `coord` (the coordinator) and `helper` (an auxiliary peer, albert/run_aux.py: it reduces parts of the
all-reduce and computes no gradients), and three trainers in client mode behind two home routers: `laptop1` and
`laptop2` behind `home1`, `laptop3` behind `home2`. Checks, from the journals and the coordinator's store:
  - every NATed trainer's gradients went into averaging rounds with the others, through the aux peer;
  - the coordinator counted every trainer's samples;
  - the trainers stay in sync and end with the same model.
With --without_aux the same swarm runs without the helper, and with a coordinator that does not follow the state
(--follow_state false; a following coordinator reduces for client-mode trainers too): every trainer then steps
alone.
Writes report.json; exit 1 if a check fails. Needs root. Tutorial: p2p/nat-traversal.md.

    sudo .venv/bin/python p2p/aux_peer.py
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.lab.netlab import NetworkLab
from p2p.scenario import (AlbertLabArguments, AlbertLabSwarm, ScenarioArguments, conclude, prepare_output,
                          print_rounds, swarm_checks)

logger = logging.getLogger(__name__)

HOMES = {"laptop1": "home1", "laptop2": "home1", "laptop3": "home2"}


@dataclass
class AuxScenarioArguments:
    without_aux: bool = field(default=False, metadata=dict(
        help="The control run: no auxiliary peer (the NATed trainers then cannot average with each other)."))


def run(args: ScenarioArguments, albert: AlbertLabArguments, scenario: AuxScenarioArguments) -> dict:
    output_dir = prepare_output(args, "aux_peer_control" if scenario.without_aux else "aux_peer")
    with NetworkLab() as lab:
        lab.add_public_host("coord")
        lab.add_public_host("helper")
        for router in sorted(set(HOMES.values())):
            lab.add_router(router)
        for laptop, router in HOMES.items():
            lab.add_private_host(laptop, router)
        with AlbertLabSwarm(lab, albert, output_dir, run_id="lab_aux_peer") as swarm:
            swarm.start_coordinator("coord", ["--follow_state", "false"] if scenario.without_aux else [])
            if not scenario.without_aux:
                swarm.start_aux("helper")
            for laptop in HOMES:
                swarm.start_trainer(laptop, laptop, ["--client_mode"])
            print(f"Training {albert.max_steps} steps: {len(HOMES)} client-mode trainers behind NAT, "
                  f"{'no' if scenario.without_aux else 'an'} auxiliary peer on a public host "
                  f"(logs in {output_dir / 'logs'})", flush=True)
            swarm.wait_until_trained()
    laptops = list(HOMES)
    report = dict(scenario="aux_peer", with_aux=not scenario.without_aux,
                  **swarm_checks(swarm, checked=laptops[1:], reference=laptops[0]))
    if scenario.without_aux:  # the control: what the helper's absence does
        report["checks"] = {"without the aux peer, no trainer averaged with another":
                            not any(r["averaged_with_others"] for r in report["rounds"].values())}
    return conclude(output_dir, report, show=print_rounds)


def main() -> None:
    setup_logging()
    args, albert, scenario = parse_arguments([ScenarioArguments, AlbertLabArguments, AuxScenarioArguments],
                                             description=__doc__)
    if not run(args, albert, scenario)["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
