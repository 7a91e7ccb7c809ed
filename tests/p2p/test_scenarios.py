"""The p2p scenarios, run as a user runs them (as root, each its own network lab), judged by their reports.

Each scenario script exits 1 if one of its own checks fails; these tests also assert the facts behind the checks
(which addresses were used, which rounds were averaged) and that the lab left nothing behind on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from collab.lab.swarm import REPO_ROOT

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None,
    reason="the p2p scenarios need root, iproute2 and iptables (CI runs as root; `make test` installs the tools)")
pytestmark = [needs_netns, pytest.mark.timeout(600)]


def machine_network_state() -> dict[str, str]:
    """What a lab must not change: the links and firewall rules of the root namespace."""
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    links = "\n".join(line.split("@")[0] for line in run("ip", "-o", "link", "show").splitlines())
    return dict(links=links, iptables=run("iptables-save"))


def lab_namespaces(owner_pid: int) -> list[str]:
    """Namespaces of the lab a scenario process built (named `dlab-<pid>-<block>[-<host>]`)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return [name for name in listed if name.startswith(f"dlab-{owner_pid}-")]


def run_scenario(script: str, output_dir: Path, *args: str,
                 timeout: float = 540) -> tuple[dict, subprocess.CompletedProcess]:
    before = machine_network_state()
    argv = [sys.executable, str(REPO_ROOT / "p2p" / script), "--output_dir", str(output_dir), *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    stdout, stderr = process.communicate(timeout=timeout)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert not lab_namespaces(process.pid), "the lab left namespaces behind"
    assert machine_network_state() == before, "the lab changed the machine's links or iptables rules"
    report_path = output_dir / "report.json"
    assert report_path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(report_path.read_text()), result


def assert_passed(report: dict, result: subprocess.CompletedProcess) -> None:
    failed = [check for check, ok in report["checks"].items() if not ok]
    assert not failed and result.returncode == 0, f"failed checks {failed}:\n{result.stdout[-3000:]}"


def test_reachability_outbound_works_inbound_fails(tmp_path):
    report, result = run_scenario("reachability.py", tmp_path)
    assert_passed(report, result)
    assert report["outbound"]["ok"] and report["laptop_record_read_by_server"]
    # the server knows the laptop only by the router's public address (NAT), and cannot dial it by either address
    assert all(f"/ip4/{report['lab']['router']}/" in addr for addr in report["server_sees_laptop_at"])
    assert "unreachable" in report["inbound_to_private_address"]["error"]
    assert "timed out" in report["inbound_to_router"]["error"]  # dropped silently, as a home router does


def test_circuit_relay_carries_small_exchanges_between_two_nats(tmp_path):
    report, result = run_scenario("circuit_relay.py", tmp_path)
    assert_passed(report, result)
    assert not any(probe["ok"] for probe in report["direct_connections"])
    relay_id = report["relay"].rsplit("/p2p/", 1)[1]
    for name, maddrs in report["relay_addresses"].items():
        assert maddrs and all(f"/p2p/{relay_id}/p2p-circuit/p2p/{report['peer_ids'][name]}" in m for m in maddrs)
    small_rounds = [[r for r in rounds if r["size"] == 1000] for rounds in report["rounds"].values()]
    assert any(all(peer[i]["event"] == "averaged" and peer[i]["min"] == peer[i]["max"] == 2.0 for peer in small_rounds)
               for i in range(3)), small_rounds  # one exchange exact on both sides
    used = [addr for addrs in report["connections"].values() for addr in addrs]
    assert used and all(f"/p2p/{relay_id}/p2p-circuit" in addr for addr in used)
    # hivemind 1.1.12's daemon cuts a relayed connection after 128 KiB (p2p/circuit-relay.md): 400 KB never arrive
    # whole. If this starts to pass, the engine was fixed and the tutorial must change.
    assert not any(report["averaged_100000_exactly"].values())


@pytest.mark.slow
def test_client_mode_trainer_behind_nat_contributes_and_holds_the_swarm_model(tmp_path, albert_dataset):
    report, result = run_scenario("client_mode.py", tmp_path, "--dataset_path", str(albert_dataset))
    assert_passed(report, result)
    laptop, cloud = report["rounds"]["laptop"], report["rounds"]["cloud1"]
    assert laptop["steps"] >= 4 and cloud["steps"] >= 4  # of 6: a trainer that catches up may skip reporting one
    assert laptop["samples"] > 0 and len(laptop["counted_by_monitor"]) >= 3
    assert all(size >= 2 for size in laptop["group_sizes"].values())
    assert not any(probe["ok"] for probe in report["dial_laptop"])
    assert not report["one_model"]["violations"]  # also among the checks: held during training, not only at the end


@pytest.mark.slow
def test_aux_peer_lets_nated_trainers_average(tmp_path, albert_dataset):
    report, result = run_scenario("aux_peer.py", tmp_path, "--dataset_path", str(albert_dataset))
    assert_passed(report, result)
    for rounds in report["rounds"].values():  # 3 clients + the aux peer and the coordinator reducing for them
        assert len(rounds["averaged_with_others"]) >= 3 and max(rounds["group_sizes"].values()) >= 4


@pytest.mark.slow
def test_all_client_swarm_serves_a_late_volunteer_the_swarm_model(tmp_path, albert_dataset):
    report, result = run_scenario("all_clients.py", tmp_path, "--dataset_path", str(albert_dataset),
                                  "--max_steps", "20", "--join_at", "3")
    assert_passed(report, result)
    join = report["late_join"]
    assert join["downloaded"] is True and join["joined_at"] >= 3 and join["first_contribution"] > join["joined_at"]
    assert not report["one_model"]["violations"] and len(report["coordinator_checkpoints"]) >= 2
