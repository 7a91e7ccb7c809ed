#!/usr/bin/env python3
"""Scenario 2, client mode: a trainer behind NAT trains with the swarm by connecting out, never in.

Builds a lab with three public hosts (`coord`, `cloud1`, `cloud2`) and a `laptop` behind the NAT router `home`,
then runs the project's real ALBERT scripts there (albert-tiny, the demo preset): the coordinator on `coord`,
trainers on `cloud1` and `cloud2`, and a trainer with `--client_mode` on `laptop`. Checks, from the trainers'
journals and the coordinator's metrics store:
  - nobody can connect to the laptop (a plain TCP dial from a public host fails);
  - the laptop's gradients went into averaging rounds with the public trainers (group size >= 2 in its journal);
  - the coordinator counted the laptop's samples in the global steps;
  - the laptop holds the swarm's model during training: after every step its parameters are within the fp16 bound
    of the public trainers' (collab.lab.one_model), or it re-synced within 2 steps of its own check finding it
    apart; and it ends with their exact model.
Writes report.json; exit 1 if a check fails. Needs root. Tutorial: p2p/nat-traversal.md.

    sudo .venv/bin/python p2p/client_mode.py
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import parse_arguments
from collab.cli import run_main, setup_logging
from collab.lab.netlab import NetworkLab
from p2p.scenario import (PEER_PORT, AlbertLabArguments, AlbertLabSwarm, ScenarioArguments, conclude,
                          prepare_output, print_rounds, swarm_checks, tcp_connect)

logger = logging.getLogger(__name__)

PUBLIC_TRAINERS = ("cloud1", "cloud2")


def run(args: ScenarioArguments, albert: AlbertLabArguments) -> dict:
    output_dir = prepare_output(args, "client_mode")
    with NetworkLab() as lab:
        for host in ("coord", *PUBLIC_TRAINERS):
            lab.add_public_host(host)
        lab.add_router("home")
        lab.add_private_host("laptop", "home")
        with AlbertLabSwarm(lab, albert, output_dir, run_id="lab_client_mode") as swarm:
            swarm.start_coordinator("coord")
            for host in PUBLIC_TRAINERS:
                swarm.start_trainer(host, host)
            swarm.start_trainer("laptop", "laptop", ["--client_mode"])
            print(f"Training {albert.max_steps} steps: coordinator and 2 trainers on public hosts, 1 client-mode "
                  f"trainer behind NAT (logs in {output_dir / 'logs'})", flush=True)
            swarm.wait_until_trained()
        report = dict(
            scenario="client_mode",
            lab={host: lab.address(host) for host in ("coord", *PUBLIC_TRAINERS, "home", "laptop")},
            dial_laptop=[tcp_connect(lab, "cloud1", lab.address("laptop"), PEER_PORT),
                         tcp_connect(lab, "cloud1", lab.address("home"), PEER_PORT)],
        )
    report.update(swarm_checks(swarm, checked=["laptop"], reference=PUBLIC_TRAINERS[0]))
    report["checks"]["nobody can dial the laptop"] = not any(probe["ok"] for probe in report["dial_laptop"])
    return conclude(output_dir, report, show=print_rounds)


def main() -> None:
    setup_logging()
    args, albert = parse_arguments([ScenarioArguments, AlbertLabArguments], description=__doc__)
    if not run(args, albert)["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
