"""What the p2p scenarios share: peers inside lab hosts, their JSON events, ALBERT swarms in the lab, reports.

A scenario script builds a lab (collab/lab/netlab.py), starts real peers inside its hosts (p2p/lab_peer.py for bare
DHT peers, the ALBERT scripts for training), checks what happened from the peers' own output (events, journals,
the coordinator's metrics store) and writes `report.json` next to the peers' logs. Everything runs as root.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

from collab.errors import UserError
from collab.journal import JOURNAL_FILE, probe_distance, read_journal
from collab.lab.netlab import NetworkLab
from collab.lab.one_model import RESYNC_WITHIN, one_model_report
from collab.lab.swarm import REPO_ROOT, LocalSwarm, PeerProcess
from collab.store import read_store

logger = logging.getLogger(__name__)

COORDINATOR_PORT = 31337
PEER_PORT = 31338
LAB_PEER = REPO_ROOT / "p2p/lab_peer.py"
DEMO_CONFIG = REPO_ROOT / "albert/configs/demo.json"


@dataclass
class ScenarioArguments:
    output_dir: Optional[str] = field(default=None, metadata=dict(
        help="Where peer logs and report.json go (default: outputs/p2p/<scenario>). Emptied at the start."))
    verbose: bool = field(default=False, metadata=dict(help="Also show the lab's set-up and teardown steps."))


def prepare_output(args: ScenarioArguments, scenario: str) -> Path:
    output_dir = Path(args.output_dir or f"outputs/p2p/{scenario}").resolve()
    shutil.rmtree(output_dir, ignore_errors=True)  # a scenario always starts from scratch
    output_dir.mkdir(parents=True)
    logging.getLogger("collab.lab.netlab").setLevel(logging.INFO if args.verbose else logging.WARNING)
    return output_dir


# -- bare peers (p2p/lab_peer.py) ------------------------------------------------------------------------------------

class LabPeer:
    """A p2p/lab_peer.py process inside a lab host; collects the JSON events it prints."""

    def __init__(self, lab: NetworkLab, host: str, name: str, args: Sequence[str], log_dir: Path):
        self.name, self.host = name, host
        self.log_path = log_dir / f"{name}.log"
        self.events: list[dict] = []
        self._log = open(self.log_path, "w")
        self.popen = lab.popen(host, [sys.executable, str(LAB_PEER), "--name", name, *args],
                               stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO_ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                continue

    def event(self, name: str, last: bool = False) -> Optional[dict]:
        """The first (or last) event of this name the peer reported."""
        found = [event for event in self.events if event["event"] == name]
        return (found[-1] if last else found[0]) if found else None

    def wait_event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while (found := self.event(name)) is None:
            if self.popen.poll() is not None and not self._reader.is_alive():
                raise UserError(f"{self.name} exited (code {self.popen.returncode}) before '{name}'; "
                                f"see {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise UserError(f"{self.name} did not report '{name}' within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.2)
        return found

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        self._log.close()
        return code

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def lab_maddr(lab: NetworkLab, host: str, peer_id: str, port: int) -> str:
    return f"/ip4/{lab.address(host)}/tcp/{port}/p2p/{peer_id}"


def listen_on(port: int) -> list[str]:
    return ["--host_maddrs", f"/ip4/0.0.0.0/tcp/{port}"]


# -- plain TCP: is a host reachable at all? ------------------------------------------------------------------------

_TCP_CONNECT = r"""
import socket, sys, time, json
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print(json.dumps(dict(ok=True, error=None, seconds=time.monotonic() - started)))
except OSError as e:
    print(json.dumps(dict(ok=False, error=f"{type(e).__name__}: {e}", seconds=time.monotonic() - started)))
"""


def tcp_connect(lab: NetworkLab, from_host: str, address: str, port: int, timeout: float = 3.0) -> dict:
    """Open a plain TCP connection from a lab host: the ground truth of whether a direct dial can work."""
    result = lab.run(from_host, [sys.executable, "-c", _TCP_CONNECT, address, str(port), str(timeout)],
                     timeout=timeout + 30)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(source=from_host, target=f"{address}:{port}", **outcome)


# -- ALBERT swarms in the lab -----------------------------------------------------------------------------------------

@dataclass
class AlbertLabArguments:
    dataset_path: Optional[str] = field(default=None, metadata=dict(
        help="A tokenized ALBERT dataset (albert/tokenize_wikitext103.py). Default: build the small built-in "
             "demo corpus into outputs/p2p/data once (offline, a minute)."))
    max_steps: int = field(default=6, metadata=dict(help="Global steps to train (albert-tiny, demo preset)."))
    target_batch_size: int = field(default=512, metadata=dict(help="Samples per global step, over all trainers."))
    timeout: float = field(default=600.0, metadata=dict(help="Give up if the swarm has not finished by then (s)."))


def albert_dataset(args: AlbertLabArguments) -> Path:
    if args.dataset_path:
        path = Path(args.dataset_path)
        if not path.is_dir():
            raise UserError(f"--dataset_path {path} does not exist: build one with albert/tokenize_wikitext103.py")
        return path
    from albert.run_demo import prepare_data

    path = Path("outputs/p2p/data").resolve()
    prepare_data(path)
    return path


class AlbertLabSwarm:
    """The project's real ALBERT scripts (coordinator, aux, trainers) running inside lab hosts."""

    def __init__(self, lab: NetworkLab, args: AlbertLabArguments, output_dir: Path, run_id: str):
        self.lab, self.args, self.output_dir = lab, args, output_dir
        self.swarm = LocalSwarm(output_dir / "logs")
        self.common = ["--config", str(DEMO_CONFIG), "--dataset_path", str(albert_dataset(args)), "--run_id", run_id,
                       "--max_steps", str(args.max_steps), "--target_batch_size", str(args.target_batch_size),
                       "--matchmaking_time", "4", "--averaging_timeout", "60", "--startup_timeout", "60"]
        self.initial_peers: list[str] = []
        self.trainers: dict[str, PeerProcess] = {}
        self.coordinator: Optional[PeerProcess] = None

    def __enter__(self) -> "AlbertLabSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.swarm.stop_all()

    def start_coordinator(self, host: str, extra: Sequence[str] = ()) -> list[str]:
        folder = self.output_dir / "coordinator"
        self.coordinator = self.swarm.start("coordinator", "albert/run_first_peer.py", self.common + [*extra,
            *listen_on(COORDINATOR_PORT), "--monitor_output_dir", str(folder),
            "--identity_path", str(self.output_dir / "coordinator.id"), "--refresh_period", "0.5",
            "--wandb_mode", "disabled"], wrap=partial(self.lab.command, host))
        line = self.swarm.wait_for_file(folder / "initial_peers.txt", 180, watch=[self.coordinator])
        address = self.lab.address(host)  # the coordinator also lists 127.0.0.1, which is its own loopback
        self.initial_peers = [maddr for maddr in line.split()[1:] if f"/ip4/{address}/" in maddr]
        return self.initial_peers

    def start_aux(self, host: str) -> PeerProcess:
        return self.swarm.start("aux", "albert/run_aux.py", self.common + self._join() + listen_on(PEER_PORT),
                                wrap=partial(self.lab.command, host))

    def start_trainer(self, name: str, host: str, extra: Sequence[str] = ()) -> PeerProcess:
        args = self.common + self._join() + listen_on(PEER_PORT) + ["--output_dir", str(self.output_dir / name),
                                                                    "--seed", "42", *extra]
        self.trainers[name] = self.swarm.start(name, "albert/run_trainer.py", args,
                                               wrap=partial(self.lab.command, host))
        return self.trainers[name]

    def _join(self) -> list[str]:
        if not self.initial_peers:
            raise RuntimeError("start the coordinator first")
        return ["--initial_peers", *self.initial_peers]

    def wait_until_trained(self) -> None:
        self.swarm.wait_until(lambda: not any(t.alive for t in self.trainers.values()), self.args.timeout,
                              "the trainers to finish", watch=[self.coordinator])
        failed = [name for name, t in self.trainers.items() if t.popen.returncode != 0]
        if failed:
            trainer = self.trainers[failed[0]]
            raise UserError(f"{failed[0]} exited with code {trainer.popen.returncode}; last lines of "
                            f"{trainer.log_path}:\n{trainer.log_tail()}")
        self.swarm.stop(self.coordinator)  # flushes its last steps to the store

    # -- what happened, from the peers' own records --

    def journal(self, name: str) -> list[dict]:
        return read_journal(self.output_dir / name / JOURNAL_FILE)

    def steps(self, name: str) -> dict[int, dict]:
        """A trainer's journal: what it contributed to each global step and how the round went."""
        return {e["step"]: e for e in self.journal(name) if e["event"] == "step"}

    def store(self) -> dict[str, list[dict]]:
        return read_store(self.output_dir / "coordinator/metrics.sqlite")

    def counted_by_monitor(self, name: str) -> list[int]:
        """Steps at which the coordinator's metrics store holds the numbers this trainer published."""
        rows = {(r["step"], r["loss_sum"], r["mini_steps"], r["samples"]) for r in self.store()["peer_metrics"]}
        return sorted(step for step, e in self.steps(name).items()
                      if (step, e["loss_sum"], e["mini_steps"], e["samples_accumulated"]) in rows)

    def probe_gap(self, first: str, second: str) -> dict[int, float]:
        """Largest parameter difference between two trainers after each global step both journaled."""
        a, b = self.steps(first), self.steps(second)
        return {step: probe_distance(a[step]["probe"], b[step]["probe"]) for step in sorted(set(a) & set(b))}

    def same_final_model(self, first: str, second: str) -> bool:
        """Did two trainers save bit-identical weights at the last step (the end-of-run agreement)?"""
        import torch
        from safetensors.torch import load_file

        step = f"checkpoints/step-{self.args.max_steps}/model.safetensors"
        paths = [self.output_dir / name / step for name in (first, second)]
        if not all(path.exists() for path in paths):
            return False
        a, b = (load_file(str(path)) for path in paths)
        return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)

    def round_summary(self, name: str) -> dict:
        steps = self.steps(name)
        return dict(
            steps=len(steps),
            averaged_with_others=sorted(step for step, e in steps.items()
                                        if e["outcome"] == "averaged" and e["trainers_averaged"] >= 2),
            group_sizes={str(s): e["trainers_averaged"] + e["aux_in_group"] for s, e in sorted(steps.items())},
            samples=sum(e["samples_accumulated"] for e in steps.values()),
            counted_by_monitor=self.counted_by_monitor(name),
        )


# -- reports ---------------------------------------------------------------------------------------------------------

def conclude(output_dir: Path, report: dict, show: Optional[Callable[[dict], None]] = None) -> dict:
    """Judge the checks, write report.json, print what was seen (`show`) and the checks; returns the report."""
    report["passed"] = all(report["checks"].values())
    write_report(output_dir, report)
    if show is not None:
        show(report)
    print_checks(report, output_dir)
    return report


def write_report(output_dir: Path, report: dict) -> Path:
    path = output_dir / "report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def swarm_checks(swarm: AlbertLabSwarm, checked: Sequence[str], reference: str) -> dict:
    """What the `checked` trainers contributed, and how far their parameters were from the `reference` trainer's."""
    names = [reference, *checked]
    rounds = {name: swarm.round_summary(name) for name in names}
    gaps = {name: swarm.probe_gap(reference, name) for name in checked}
    checks = {}
    for name in checked:
        half = max(1, rounds[name]["steps"] // 2)  # of the steps it took part in (a late volunteer joins mid-run)
        checks[f"{name}'s gradients were averaged with other peers"] = len(rounds[name]["averaged_with_others"]) >= half
        checks[f"the coordinator counted {name}'s samples"] = len(rounds[name]["counted_by_monitor"]) >= half
        checks[f"{name} ends with {reference}'s exact model"] = swarm.same_final_model(reference, name)
    # during training, not only at the end: every pair within the fp16 bound after every step, except for the
    # RESYNC_WITHIN steps after a trainer's own value check found it apart (collab.lab.one_model)
    one_model = one_model_report({name: swarm.journal(name) for name in names})
    checks[f"the trainers held one model after every step (within the fp16 bound; a trainer apart re-synced within "
           f"{RESYNC_WITHIN} steps)"] = one_model.held and len(one_model.pairs) > 0
    return dict(rounds=rounds, parameter_gap={name: {str(s): g for s, g in gap.items()} for name, gap in gaps.items()},
                one_model=dict(violations=one_model.violations, out_of_sync=one_model.out_of_sync,
                               worst_in_sync=one_model.worst(excused=False)),
                checks=checks)


def print_rounds(report: dict) -> None:
    for name, rounds in report["rounds"].items():
        print(f"  {name:>8}: {rounds['steps']} steps, averaged with others at {len(rounds['averaged_with_others'])}, "
              f"group sizes {' '.join(map(str, rounds['group_sizes'].values()))}, {rounds['samples']} samples, "
              f"counted by the coordinator at {len(rounds['counted_by_monitor'])}")
    for name, gaps in report.get("parameter_gap", {}).items():
        shown = " ".join(f"{gap:.1e}" for gap in gaps.values())
        print(f"  {name:>8}: parameter gap to the reference trainer after each step: {shown}")
    for name, steps in report.get("one_model", {}).get("out_of_sync", {}).items():
        if steps:
            print(f"  {name:>8}: its value check found it out of sync after steps {steps} (then it re-synced)")


def print_checks(report: dict, output_dir: Path) -> None:
    for check, ok in report["checks"].items():
        print(f"  [{'ok' if ok else 'FAILED'}] {check}")
    print(f"  report: {output_dir / 'report.json'}")
