#!/usr/bin/env python3
"""Scenario 1, reachability: a peer behind a home router can reach out, but nobody can reach in.

Builds a lab with a public `server` and a `laptop` behind the NAT router `home`, starts a hivemind DHT peer on
each (p2p/lab_peer.py), and checks:
  - the laptop joins the server's DHT and stores a record the server reads (outbound connections work);
  - the server sees the laptop at the router's public address, not the laptop's own (the NAT rewrote it);
  - a direct TCP connection from the server to the laptop fails, both to the laptop's private address (no route
    to someone else's home network) and to the router's public address on the laptop's port (the router drops
    connections that start outside, like any home router).
Writes report.json; exit 1 if a check fails. Needs root. Tutorial: p2p/nat-traversal.md.

    sudo .venv/bin/python p2p/reachability.py
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
from p2p.scenario import (COORDINATOR_PORT, PEER_PORT, LabPeer, ScenarioArguments, lab_maddr, listen_on,
                          conclude, prepare_output, tcp_connect, verdict)

logger = logging.getLogger(__name__)


def run(args: ScenarioArguments) -> dict:
    output_dir = prepare_output(args, "reachability")
    with NetworkLab() as lab:
        lab.add_public_host("server")
        lab.add_router("home")
        lab.add_private_host("laptop", "home")
        server = LabPeer(lab, "server", "server", [*listen_on(COORDINATOR_PORT), "--expect", "hello_from_laptop",
                                                   "--stay", "5"], output_dir)
        server_maddr = lab_maddr(lab, "server", server.wait_event("ready", 120)["peer_id"], COORDINATOR_PORT)
        laptop = LabPeer(lab, "laptop", "laptop", ["--initial_peers", server_maddr, *listen_on(PEER_PORT),
                                                   "--store", "hello_from_laptop", "--stay", "10"], output_dir)
        laptop_id = laptop.wait_event("ready", 120)["peer_id"]
        found = server.wait_event("found", 90)
        seen_as = server.wait_event("connections", 60)["peers"].get(laptop_id, [])
        report = dict(
            scenario="reachability",
            lab=dict(server=lab.address("server"), router=lab.address("home"), laptop=lab.address("laptop")),
            laptop_record_read_by_server=found["value"] == "laptop",
            server_sees_laptop_at=seen_as,
            outbound=tcp_connect(lab, "laptop", lab.address("server"), COORDINATOR_PORT),
            inbound_to_private_address=tcp_connect(lab, "server", lab.address("laptop"), PEER_PORT),
            inbound_to_router=tcp_connect(lab, "server", lab.address("home"), PEER_PORT),
        )
        server.wait(60)
        laptop.wait(60)
    report["checks"] = {
        "laptop joined through the NAT": report["laptop_record_read_by_server"] and report["outbound"]["ok"],
        "server sees the router's address": any(f"/ip4/{report['lab']['router']}/" in a for a in seen_as),
        "no direct connection to the laptop": not (report["inbound_to_private_address"]["ok"]
                                                   or report["inbound_to_router"]["ok"]),
    }
    return conclude(output_dir, report, show=print_summary)


def print_summary(report: dict) -> None:
    lab = report["lab"]
    print(f"\nReachability: server {lab['server']} (public), laptop {lab['laptop']} behind router {lab['router']}")
    print(f"  laptop -> server {report['outbound']['target']}: {'connected' if report['outbound']['ok'] else 'FAILED'}")
    print(f"  server reads the laptop's DHT record: {verdict(report['laptop_record_read_by_server'])}")
    print(f"  server sees the laptop at: {' '.join(report['server_sees_laptop_at']) or '(no connection)'}")
    for key in ("inbound_to_private_address", "inbound_to_router"):
        probe = report[key]
        print(f"  server -> {probe['target']}: {'connected' if probe['ok'] else 'failed'} "
              f"({probe['error'] or 'ok'}, {probe['seconds']:.1f} s)")


def main() -> None:
    setup_logging()
    (args,) = parse_arguments([ScenarioArguments], description=__doc__)
    if not run(args)["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
