"""The chaos harness: a local swarm whose peers are killed with SIGKILL and restarted while it trains.

A run has four phases:
1. start a coordinator (fixed port and identity, as in production), an auxiliary peer and N trainers that
   train to `max_steps`;
2. chaos: every few seconds SIGKILL one peer (a trainer, the aux peer or the coordinator), some kills timed
   to land inside a gradient-averaging round, and restart it after a short delay; one trainer injects
   non-finite losses and gradients (collab.lab.faults), and a peer with incompatible settings tries to join.
   Chaos stops `settle_steps` before `max_steps` (or after `duration` seconds);
3. settle: no faults; the swarm trains to `max_steps`, where the trainers agree on one final state
   (collab.final_state), exit, and their final checkpoints must be identical;
4. whole-swarm restart: with every peer gone, corrupt the coordinator's newest checkpoint, restart the
   coordinator (it must skip the corrupted checkpoint and offer the previous one) and trainers with empty
   folders, which must resume at that step with the checkpoint's parameters and optimizer statistics and
   train on from there.

Under CPU contention hivemind's rounds often gather only part of the swarm (groups of 2-3 of 4 peers, seen
here), so the peers' parameters drift apart between rounds and are pulled together by the next parameter
averaging: the report shows that drift per global step. Identity is what the end of a run guarantees.

Everything is measured from the peers' journals (collab.journal), the coordinator's store and the harness's own
kill log, and summarised by `build_report`. Run it with `benchmarks/chaos.py`; the test suite runs a short one.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import load_file

from collab.checkpoints import CorruptCheckpointError, list_checkpoints, load_optimizer_state, verify_checkpoint
from collab.journal import JOURNAL_FILE, ParameterProbe, optimizer_digest, probe_distance, read_journal
from collab.lab.one_model import one_model_report
from collab.lab.swarm import LocalSwarm, PeerProcess
from collab.store import read_store

logger = logging.getLogger(__name__)

UNREACHABLE = "could not reach any of --initial_peers"  # collab.peer's one-line error


@dataclass
class Recipe:
    """How to run one track's swarm: its scripts, the flags every peer shares, and how to load a checkpoint."""

    coordinator_script: str
    trainer_script: str
    aux_script: str
    common_args: list[str]
    incompatible_args: list[str]  # appended to a trainer's flags: a peer the swarm must refuse
    load_model: Callable[[Path], torch.nn.Module]  # a checkpoint folder -> the model in it


@dataclass
class ChaosSettings:
    max_steps: int = 60  # the trainers' --max_steps: the run ends there with one agreed final state
    settle_steps: int = 8  # no faults during the last this many global steps
    duration: float = 900.0  # chaos stops after this many seconds even if the swarm is slower than expected
    num_trainers: int = 3
    aux: bool = True
    kill_interval: tuple[float, float] = (20.0, 40.0)  # seconds between kills, uniform
    restart_delay: tuple[float, float] = (2.0, 8.0)  # seconds a killed peer stays down
    round_kill_fraction: float = 0.5  # share of trainer kills timed to land inside an averaging round
    coordinator_kill_fraction: float = 0.15
    aux_kill_fraction: float = 0.15
    round_window: float = 4.0  # a timed kill lands within this many seconds after a round was scheduled
    scripted_kills: list[str] = field(default_factory=list)  # first kills, e.g. ["trainer-2@round", "coordinator"]
    faulty_trainer_faults: str = "nonfinite_loss@40+12,nonfinite_grads@90+2"  # trainer-1's faults ("" for none)
    checkpoint_interval: int = 3  # coordinator checkpoints every this many global steps
    restart_steps: int = 3  # global steps trained after the whole-swarm restart
    stall_bound: float = 120.0  # a kill the swarm does not recover from within this many seconds is a failure
    whole_swarm_restart: bool = True
    seed: int = 0


@dataclass
class Kill:
    time: float
    victim: str
    timed_to_round: bool
    swarm_step: int
    restarted_at: Optional[float] = None
    back_at: Optional[float] = None  # when the restarted peer was ready (the coordinator: it printed its address)
    new_pid: Optional[int] = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChaosRun:
    def __init__(self, recipe: Recipe, settings: ChaosSettings, root: Path):
        self.recipe, self.settings, self.root = recipe, settings, root
        self.random = random.Random(settings.seed)
        self.swarm = LocalSwarm(root / "logs")
        self.port = free_port()
        self.processes: dict[str, PeerProcess] = {}
        self.incarnations: dict[str, int] = {}
        self.kills: list[Kill] = []
        self.phases: dict[str, float] = {}
        self.initial_peers: list[str] = []
        self.incompatible: Optional[PeerProcess] = None
        self.restart_check: dict = {}
        self.crashes: list[dict] = []
        self.restarts: list[dict] = []  # every trainer start after its first: peer, pid, time
        self.unreachable_starts = 0  # peers that exited at start, one-line error, because no initial peer answered
        self.finished: dict[str, dict] = {}  # output root -> trainer -> exit code and log
        self.output_roots: dict[str, Path] = {}  # where each trainer writes (changes for the restart phase)

    # ----- peers -----
    def trainer_names(self) -> list[str]:
        return [f"trainer-{i}" for i in range(1, self.settings.num_trainers + 1)]

    def start_peer(self, name: str, output_root: Optional[Path] = None, extra_args: Sequence[str] = ()) -> PeerProcess:
        """Start (or restart) one peer under its fixed role and folders."""
        self.incarnations[name] = self.incarnations.get(name, 0) + 1
        log_name = f"{name}.{self.incarnations[name]}"
        common = self.recipe.common_args + ["--max_steps", str(self.settings.max_steps), *extra_args]
        if name == "coordinator":
            args = common + ["--monitor_output_dir", str(self.root / "coordinator"), "--identity_path",
                             str(self.root / "coordinator.id"), "--host_maddrs", f"/ip4/127.0.0.1/tcp/{self.port}",
                             "--refresh_period", "1", "--wandb_mode", "offline",
                             "--save_checkpoint_step_interval", str(self.settings.checkpoint_interval)]
            peers_file = self.root / "coordinator/initial_peers.txt"
            peers_file.unlink(missing_ok=True)
            process = self.swarm.start(log_name, self.recipe.coordinator_script, args)
            self.initial_peers = self.swarm.wait_for_file(peers_file, 180, watch=[process]).split()
        elif name == "aux":
            process = self.swarm.start(log_name, self.recipe.aux_script, common + self.initial_peers)
        else:
            self.output_roots[name] = output_root or self.root
            output_dir = self.output_roots[name] / name
            faults = self.settings.faulty_trainer_faults if name == "trainer-1" else ""
            process = self.swarm.start(log_name, self.recipe.trainer_script,
                                       common + self.initial_peers + ["--output_dir", str(output_dir)], faults=faults)
        self.processes[name] = process
        if name.startswith("trainer") and output_root is None and self.incarnations[name] > 1:
            self.restarts.append(dict(peer=name, pid=process.popen.pid, time=time.time()))
        return process

    def journal(self, name: str, output_root: Optional[Path] = None) -> list[dict]:
        return read_journal((output_root or self.root) / name / JOURNAL_FILE)

    def swarm_step(self) -> int:
        """The newest global step any trainer has journaled."""
        return max((event["step"] for name in self.trainer_names() for event in self.journal(name)
                    if event["event"] == "step"), default=0)

    # ----- phases -----
    def run(self) -> dict:
        self.phases["start"] = time.time()
        try:
            with self.swarm:
                self.start_peer("coordinator")
                if self.settings.aux:
                    self.start_peer("aux")
                for name in self.trainer_names():
                    self.start_peer(name)
                self.incompatible = self.swarm.start(
                    "incompatible", self.recipe.trainer_script,
                    self.recipe.common_args + self.initial_peers + self.recipe.incompatible_args
                    + ["--output_dir", str(self.root / "incompatible")])
                self.swarm.wait_until(lambda: self.swarm_step() >= 1, 300, "the first global step",
                                      watch=[self.processes[name] for name in self.trainer_names()])
                self.phases["chaos"] = time.time()
                self.chaos()
                self.phases["settle"] = time.time()
                self.finish_run(self.root)
                self.phases["restart"] = time.time()
                if self.settings.whole_swarm_restart:
                    self.whole_swarm_restart()
                self.phases["end"] = time.time()
        finally:
            (self.root / "kills.json").write_text(json.dumps([asdict(kill) for kill in self.kills], indent=1))
        report = build_report(self)
        (self.root / "report.json").write_text(json.dumps(report, indent=1))
        return report

    def trainers_running(self) -> bool:
        return any(self.processes[name].alive for name in self.trainer_names() if name in self.processes)

    def sleep(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Wait (or until `until()`), restarting any peer that crashed on its own: a crash is a finding."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            for name, process in list(self.processes.items()):
                if not process.alive and process.popen.returncode != 0:
                    last_line = process.log_tail(1)
                    if UNREACHABLE in last_line:  # it started while the coordinator was down: as designed
                        self.unreachable_starts += 1
                        for restart in self.restarts:
                            restart["refused"] = restart.get("refused") or restart["pid"] == process.popen.pid
                    else:
                        logger.warning(f"{name} exited on its own (code {process.popen.returncode}); restarting it")
                        self.crashes.append(dict(peer=name, code=process.popen.returncode, time=time.time(),
                                                 log=str(process.log_path), last_line=last_line))
                    self.start_peer(name, self.output_roots.get(name))
            time.sleep(0.5)

    def finish_run(self, output_root: Path) -> None:
        """Let the trainers reach --max_steps and agree on the final state; then stop the other peers."""
        self.sleep(1800, until=lambda: not self.trainers_running())
        if self.trainers_running():
            raise TimeoutError("the trainers did not finish within 30 minutes")
        self.finished[output_root.name] = {
            name: dict(code=self.processes[name].popen.returncode, log=str(self.processes[name].log_path))
            for name in self.trainer_names()}
        for process in list(self.processes.values()):
            self.swarm.stop(process)

    def chaos(self) -> None:
        deadline = time.monotonic() + self.settings.duration
        last_step = self.settings.max_steps - self.settings.settle_steps
        script = list(self.settings.scripted_kills)
        # before any kill, so that the refusal can only be about its settings
        self.swarm.wait_until(lambda: not self.incompatible.alive, 180, "the incompatible peer to be refused")
        while time.monotonic() < deadline and self.swarm_step() < last_step:
            self.sleep(self.random.uniform(*self.settings.kill_interval),
                       until=lambda: self.swarm_step() >= last_step)
            if self.swarm_step() >= last_step or time.monotonic() >= deadline:
                break
            victim, timed = self.pick_victim(script.pop(0) if script else None)
            if timed and not self.wait_for_round(victim, give_up=lambda: self.swarm_step() >= last_step):
                continue  # no round came in time, or the run is about to end: no kill this time
            self.kill(victim, timed)

    def pick_victim(self, scripted: Optional[str]) -> tuple[str, bool]:
        if scripted is not None:
            name, _, when = scripted.partition("@")
            return name, when == "round"
        draw = self.random.random()
        if draw < self.settings.coordinator_kill_fraction:
            return "coordinator", False
        if self.settings.aux and draw < self.settings.coordinator_kill_fraction + self.settings.aux_kill_fraction:
            return "aux", False
        return self.random.choice(self.trainer_names()), self.random.random() < self.settings.round_kill_fraction

    def kill(self, name: str, timed_to_round: bool) -> None:
        kill = Kill(time.time(), name, timed_to_round, self.swarm_step())
        logger.info(f"Killing {name} (SIGKILL{', inside an averaging round' if timed_to_round else ''}) "
                    f"at global step {kill.swarm_step}")
        self.swarm.kill(self.processes.pop(name))
        self.kills.append(kill)
        self.sleep(self.random.uniform(*self.settings.restart_delay))
        kill.restarted_at = time.time()
        kill.new_pid = self.start_peer(name).popen.pid
        kill.back_at = time.time()

    def wait_for_round(self, name: str, give_up: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Wait until the trainer has scheduled a gradient round it has not finished, then a random moment more."""
        deadline = time.monotonic() + timeout
        pid = self.processes[name].popen.pid
        while time.monotonic() < deadline and not give_up():
            events = [event for event in self.journal(name) if event["pid"] == pid]
            scheduled = [e["time"] for e in events if e["event"] == "round_scheduled"]
            finished = [e["time"] for e in events if e["event"] == "step"]
            if scheduled and (not finished or scheduled[-1] > finished[-1]):
                time.sleep(self.random.uniform(0.0, self.settings.round_window))
                return True
            time.sleep(0.1)
        return False

    def whole_swarm_restart(self) -> None:
        """With every peer gone, corrupt the newest coordinator checkpoint and restart from the one before it."""
        check = self.restart_check
        folders = list_checkpoints(self.root / "coordinator/checkpoints")
        if len(folders) < 2:
            raise RuntimeError(f"the coordinator saved {len(folders)} checkpoint(s); the restart test needs two")
        newest, previous = folders[-1], folders[-2]
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn write
        expected = int(previous.name.split("-")[1])
        state = load_optimizer_state(previous)
        state["state"].pop("local_epoch", None)
        check.update(corrupted=newest.name, expected_step=expected, expected_optimizer=optimizer_digest(state),
                     expected_probe=ParameterProbe(self.recipe.load_model(previous)).read()["probe"])

        restart_root = self.root / "restart"
        until = ["--max_steps", str(expected + self.settings.restart_steps)]
        self.processes = {}
        coordinator = self.start_peer("coordinator", extra_args=until)
        if self.settings.aux:
            self.start_peer("aux", extra_args=until)
        trainers = [self.start_peer(name, restart_root, extra_args=until) for name in self.trainer_names()]

        def joined_events() -> dict[str, dict]:
            return {name: event for name in self.trainer_names() for event in self.journal(name, restart_root)
                    if event["event"] == "state" and event["reason"] == "joined"}

        self.swarm.wait_until(lambda: len(joined_events()) == len(trainers), 300, "restarted trainers to join",
                              watch=[coordinator, *trainers])
        check["joined"] = joined_events()
        check["coordinator_log"] = coordinator.log_text()
        self.finish_run(restart_root)
        check["resumed_steps"] = sorted({e["step"] for n in self.trainer_names() for e in self.journal(n, restart_root)
                                         if e["event"] == "step"})


# ----- the report -----

def _percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_report(run: ChaosRun) -> dict:
    """Everything the run measured, from the trainers' journals, the kill log and the coordinator's store."""
    names, phases, settings = run.trainer_names(), run.phases, run.settings
    events = [dict(event, peer=name) for name in names for event in run.journal(name)]
    steps = [event for event in events if event["event"] == "step"]
    chaos_start, chaos_end = phases.get("chaos", 0), phases.get("settle", time.time())
    reached = first_reached(steps)
    store = _coordinator_store(run.root)
    restart_events = [event for name in names for event in run.journal(name, run.root / "restart")]
    folders = [folder for root in [run.root / "coordinator/checkpoints", *(run.root.glob("**/checkpoints"))]
               for folder in list_checkpoints(root)]
    incompatible = run.incompatible
    report = dict(trainers=len(names), aux=settings.aux,
                  duration_s=round(chaos_end - phases.get("chaos", chaos_end), 1))
    report.update(kill_measures(run.kills, reached, settings.stall_bound, phases["start"]))
    report.update(progress_measures(steps, chaos_start, chaos_end, phases["start"]))
    report.update(round_measures(steps))
    report.update(sample_measures(events, steps))
    report.update(rejoin_measures(events, run.restarts))
    report.update(divergence_measures(divergence_by_step(steps)))
    report.update(one_model_measures({name: run.journal(name) for name in names}))
    report.update(final_states=_final_states(run, run.root, settings.max_steps), crashes=run.crashes,
                  starts_refused_while_coordinator_down=run.unreachable_starts)
    report.update(coordinator_measures(run.kills, reached, store, phases.get("restart", time.time())))
    report.update(checkpoint_measures(store, events + restart_events, folders, run.root))
    report.update(nonfinite_measures(events, steps))
    report.update(incompatible_exit_code=None if incompatible is None else incompatible.popen.poll(),
                  incompatible_last_line=None if incompatible is None else (incompatible.log_tail(1) or None))
    if run.restart_check:
        final = _final_states(run, run.root / "restart", run.restart_check["expected_step"] + settings.restart_steps)
        report.update(restart_measures(run.restart_check, final))
    report["phases"] = {name: round(t - phases["start"], 1) for name, t in phases.items()}
    return report


def first_reached(steps: Sequence[dict]) -> dict[int, float]:
    """Global step -> when any trainer journaled it first."""
    reached: dict[int, float] = {}
    for event in sorted(steps, key=lambda e: e["time"]):
        reached.setdefault(event["step"], event["time"])
    return reached


def progress_measures(steps: Sequence[dict], chaos_start: float, chaos_end: float, run_start: float) -> dict:
    """How far the swarm got, the longest wait for the next global step during the chaos, and whether any peer
    incarnation (one pid) ever journaled a step that was not newer than its previous one."""
    reached = first_reached(steps)
    times = sorted(t for t in reached.values() if chaos_start <= t <= chaos_end)
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    by_pid: dict[int, list[int]] = {}
    for event in steps:
        by_pid.setdefault(event["pid"], []).append(event["step"])
    return dict(
        global_steps=max(reached, default=0),
        longest_wait_for_a_step_s=round(max(gaps, default=0.0), 1),
        non_monotone_peers=sum(any(b <= a for a, b in zip(seq, seq[1:])) for seq in by_pid.values()),
        step_times={str(step): round(t - run_start, 2) for step, t in sorted(reached.items())},
    )


def round_measures(steps: Sequence[dict]) -> dict:
    """How the trainers' gradient rounds ended: averaged with others, failed (an expired round counts as failed, as
    in collab.metrics), or alone. Step events carry `outcome` (journals from before it: `round`)."""
    outcomes = [event.get("outcome", event.get("round")) for event in steps]
    return dict(rounds_averaged=outcomes.count("averaged"),
                rounds_failed=outcomes.count("failed") + outcomes.count("expired"), rounds_alone=outcomes.count("alone"))


def kill_measures(kills: Sequence[Kill], reached: dict[int, float], stall_bound: float, run_start: float) -> dict:
    """The kills by role; one survived if the swarm reached a newer global step within `stall_bound` seconds."""
    survived = sum(any(kill.time < t <= kill.time + stall_bound for t in reached.values()) for kill in kills)
    return dict(
        kills=len(kills),
        kills_by_role={role: sum(kill.victim.split("-")[0] == role for kill in kills)
                       for role in ("trainer", "aux", "coordinator")},
        kills_inside_rounds=sum(kill.timed_to_round for kill in kills),
        kills_survived=survived,
        kill_log=[dict(asdict(kill), time=round(kill.time - run_start, 2)) for kill in kills],
    )


def sample_measures(events: Sequence[dict], steps: Sequence[dict]) -> dict:
    """Samples computed by every incarnation (its last journaled count) versus contributed to global steps."""
    computed: dict[int, int] = {}
    for event in events:
        count = event.get("samples_computed", event.get("samples") if event["event"] == "computed" else None)
        if count is not None:
            computed[event["pid"]] = max(computed.get(event["pid"], 0), count)
    used = sum(event["samples_accumulated"] for event in steps)
    total = sum(computed.values())
    return dict(samples_computed=total, samples_in_global_steps=used,
                wasted_fraction=round(1 - used / total, 4) if total else None)


def shows_download(event: dict) -> bool:
    """Whether a journal event says that its peer downloaded the swarm's state.

    A "joined" state event carries `downloaded` (whether the start-up download got a state); journals written
    before that field existed count a "joined" event as a download. A "downloaded" or "resynced" state event
    always is one.
    """
    if event["event"] != "state":
        return False
    if event.get("reason") in ("downloaded", "resynced"):
        return True
    if event.get("reason") == "joined":
        return bool(event.get("downloaded", True))
    return bool(event.get("downloaded", False))


def rejoin_measures(events: Sequence[dict], restarts: Sequence[dict]) -> dict:
    """Restarted trainers: how many rejoined (downloaded the state), how many were expected to (not refused at
    start, not killed again before they joined), and the times from the restart to the download and to the
    first contribution to a global step."""
    rejoin, first_contribution, awaited = [], [], 0
    for restart in restarts:
        superseded = any(other["peer"] == restart["peer"] and other["time"] > restart["time"] for other in restarts)
        own = [event for event in events if event["pid"] == restart["pid"]]
        downloaded_at = next((event["time"] for event in own if shows_download(event)), None)
        awaited += not restart.get("refused") and (downloaded_at is not None or not superseded)
        stepped = next((event["time"] for event in own if event["event"] == "step"), None)
        if downloaded_at is not None:
            rejoin.append(downloaded_at - restart["time"])
        if stepped is not None:
            first_contribution.append(stepped - restart["time"])
    return dict(
        trainer_restarts=len(restarts), trainer_restarts_rejoined=len(rejoin),
        trainer_restarts_expected_to_rejoin=awaited,
        rejoin_s_median=_round(statistics.median(rejoin) if rejoin else None),
        rejoin_s_p95=_round(_percentile(rejoin, 0.95)),
        first_contribution_s_median=_round(statistics.median(first_contribution) if first_contribution else None),
        first_contribution_s_p95=_round(_percentile(first_contribution, 0.95)),
    )


def divergence_by_step(steps: Sequence[dict]) -> dict[int, float]:
    """Global step -> the largest distance (max abs difference) between the probes of peers at that step."""
    divergence: dict[int, float] = {}
    for step in sorted({event["step"] for event in steps}):
        probes = [torch.tensor(event["probe"], dtype=torch.float64) for event in steps if event["step"] == step]
        if len(probes) >= 2:
            stacked = torch.stack(probes)
            divergence[step] = float((stacked.max(0).values - stacked.min(0).values).max())
    return divergence


def divergence_measures(divergence: dict[int, float]) -> dict:
    return dict(max_divergence=max(divergence.values(), default=None),
                median_divergence=statistics.median(divergence.values()) if divergence else None,
                divergence_by_step={str(step): value for step, value in divergence.items()})


def one_model_measures(journals: dict[str, list[dict]]) -> dict:
    """Did the trainers hold one model during training (collab.lab.one_model)? The divergence between trainers in
    sync, the pairs beyond the bound that no verdict excused, and how often trainers re-synced."""
    report = one_model_report(journals)
    in_sync = [pair["distance"] for pair in report.pairs if not pair["excused"]]
    return dict(one_model_violations=len(report.violations),
                max_divergence_in_sync=max(in_sync, default=None),
                median_divergence_in_sync=statistics.median(in_sync) if in_sync else None,
                out_of_sync_verdicts=sum(len(steps) for steps in report.out_of_sync.values()),
                resyncs=sum(event["event"] == "resynced" for events in journals.values() for event in events))


def checkpoint_measures(store: dict, events: Sequence[dict], folders: Sequence[Path], root: Path) -> dict:
    """Checkpoints written (the coordinator's store plus the trainers' journals) and whether every folder left on
    disk verifies (the one corrupted on purpose is listed, relative to `root`)."""
    verified, corrupted = 0, []
    for folder in dict.fromkeys(folders):
        try:
            verify_checkpoint(folder)
            verified += 1
        except CorruptCheckpointError:
            corrupted.append(str(folder.relative_to(root)))
    return dict(checkpoints_written=len(store["checkpoints"]) + sum(event["event"] == "checkpoint" for event in events),
                checkpoints_verified=verified, checkpoints_corrupted=corrupted)


def nonfinite_measures(events: Sequence[dict], steps: Sequence[dict]) -> dict:
    """Non-finite values that reached a journal (a round outcome or a parameter probe), and the non-finite losses
    and gradients the trainers counted (the injected faults)."""
    nonfinite = sum(not event.get("finite", True) for event in events if "finite" in event)
    nonfinite += sum(any(v != v or abs(v) == float("inf") for v in event["probe"]) for event in events
                     if "probe" in event)
    return dict(nonfinite_values=nonfinite,
                injected_nonfinite_losses=max((e.get("nonfinite_losses", 0) for e in steps), default=0),
                injected_nonfinite_gradients=max((e.get("nonfinite_gradients", 0) for e in steps), default=0))


def coordinator_measures(kills: Sequence[Kill], reached: dict[int, float], store: dict, restart_phase: float) -> dict:
    """The trainers step while the coordinator is down; once back, it records steps and saves checkpoints again
    (checkpoints before `restart_phase`, the whole-swarm restart, which starts a new coordinator)."""
    coordinator_kills = [kill for kill in kills if kill.victim == "coordinator" and kill.back_at is not None]
    back = max((kill.back_at for kill in coordinator_kills), default=None)
    return dict(
        steps_while_coordinator_down=sum(kill.time < t < kill.back_at for kill in coordinator_kills
                                         for t in reached.values()),
        coordinator_steps_recorded=len(store["global_steps"]),
        coordinator_steps_recorded_after_restart=None if back is None else sum(
            row["time"] > back for row in store["global_steps"]),
        coordinator_checkpoints_after_restart=None if back is None else sum(
            back < row["time"] < restart_phase for row in store["checkpoints"]),
    )


def restart_measures(check: dict, final_states: dict) -> dict:
    """The whole-swarm restart: the trainers joined at the step of the newest intact coordinator checkpoint, with
    its parameters and optimizer state, then trained on to the same final state."""
    joined, expected = check["joined"], check["expected_step"]
    at_expected = [event for event in joined.values() if event["step"] == expected]
    return dict(
        restart_corrupted_checkpoint=check["corrupted"],
        restart_expected_step=expected,
        restart_joined_steps=sorted(event["step"] for event in joined.values()),
        restart_probe_distance=max(probe_distance(event["probe"], check["expected_probe"]) for event in at_expected)
        if at_expected else None,
        restart_optimizer_match=all(_digests_match(event["optimizer"], check["expected_optimizer"])
                                    for event in at_expected),
        restart_skipped_corrupted="Skipping corrupted checkpoint" in check["coordinator_log"],
        restart_resumed_steps=check["resumed_steps"],
        restart_final_states=final_states,
    )


def _final_states(run: ChaosRun, output_root: Path, max_steps: int) -> dict:
    """How the trainers ended: exit codes, the step of their last checkpoint, and how far apart those are."""
    finished = run.finished.get(output_root.name, {})
    steps, weights = {}, []
    for name in run.trainer_names():
        folders = list_checkpoints(output_root / name / "checkpoints")
        if folders:
            steps[name] = int(folders[-1].name.split("-")[1])
            weights.append(load_file(str(folders[-1] / "model.safetensors")))
    distance = max((float((other[key] - weights[0][key]).abs().max()) for other in weights[1:] for key in weights[0]),
                   default=0.0) if weights else None
    return dict(exit_codes={name: info["code"] for name, info in finished.items()}, checkpoint_steps=steps,
                max_steps=max_steps, max_distance=distance)


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def _digests_match(first: dict, second: dict, rtol: float = 1e-6) -> bool:
    return first.keys() == second.keys() and all(
        abs(first[key] - second[key]) <= rtol * max(1.0, abs(second[key])) for key in first)


def _coordinator_store(root: Path) -> dict[str, list[dict]]:
    store = root / "coordinator/metrics.sqlite"
    return read_store(store) if store.exists() else dict(global_steps=[], peer_metrics=[], checkpoints=[])
