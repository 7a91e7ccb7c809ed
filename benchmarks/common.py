"""Helpers shared by the benchmark scripts: machine description, summaries of repeated timings, file barriers
between worker processes, and writing the JSON / markdown / PNG triple into benchmarks/results/."""
from __future__ import annotations

import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
_logger = logging.getLogger(__name__)

# The parameter count of the paper's model as this project builds it: albert/model.py's "albert-large" preset with
# the 30,000-token vocabulary of albert-large-v2 (AlbertForPreTraining, tied decoder counted once).
ALBERT_LARGE_PARAMETERS = 17_847_474


def setup_worker_logging() -> None:
    """Logging of an averaging worker process: quiet, except why a round left a peer with part of the result."""
    from collab.cli import setup_logging

    setup_logging(logging.WARNING)  # hivemind narrates every round at INFO; the harness reads the JSON instead
    # Why a peer of a round got only part of the result is logged by hivemind at DEBUG only: keep it in the log.
    logging.getLogger("hivemind.averaging.allreduce").setLevel(logging.DEBUG)
    # Which peer gave up on which leader, and who assembled which group, likewise (a few lines per round): the
    # evidence when a round's group is formed without a peer that believes it is still looking (`form_group`).
    logging.getLogger("hivemind.averaging.matchmaking").setLevel(logging.DEBUG)


def machine_info() -> dict:
    """What the numbers were measured on: cores, memory, CPU model, library versions, commit."""
    import hivemind
    import numpy
    import torch

    return dict(
        hostname=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
        cpu_count=os.cpu_count(), cpus_usable=len(os.sched_getaffinity(0)), cpu_model=_cpu_model(),
        memory_gib=_memory_gib(), torch=torch.__version__, hivemind=hivemind.__version__, numpy=numpy.__version__,
        git_commit=_git_commit(), load_average_at_start=os.getloadavg(),
    )


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> Optional[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{' (with uncommitted changes)' if dirty else ''}" if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def summarize(values: Sequence[float]) -> dict:
    """Median and spread of repeated measurements (the median resists one-off stalls on a shared machine)."""
    if not values:
        return dict(median=None, min=None, max=None, count=0)
    return dict(median=statistics.median(values), min=min(values), max=max(values), count=len(values))


def free_tcp_port() -> int:
    """A port nobody listens on right now (for a rendezvous that needs a fixed number up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_atomically(path: Path, text: str) -> None:
    """Readers polling for `path` never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


def wait_for_path(path: Path, timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {path}")
        time.sleep(poll)


class FileBarrier:
    """All `world_size` processes sharing `directory` wait in `wait(name)` until every one of them arrived.

    A barrier through files (not through the network) so that it does not disturb what is being measured and
    works before and after any communication library is up. Each process creates `<name>.<rank>` and polls
    for the others; the poll is short because the moment everyone passes the barrier starts a timed section.
    """

    def __init__(self, directory: Path, rank: int, world_size: int, timeout: float = 300.0, poll: float = 0.002):
        self.directory, self.rank, self.world_size = directory, rank, world_size
        self.timeout, self.poll = timeout, poll
        self.directory.mkdir(parents=True, exist_ok=True)

    def wait(self, name: str) -> None:
        (self.directory / f"{name}.{self.rank}").touch()
        expected = [self.directory / f"{name}.{rank}" for rank in range(self.world_size)]
        deadline = time.monotonic() + self.timeout
        while not all(path.exists() for path in expected):
            if time.monotonic() > deadline:
                missing = [path.name for path in expected if not path.exists()]
                raise TimeoutError(f"barrier {name!r}: still waiting for {missing} after {self.timeout:.0f}s")
            time.sleep(self.poll)

    def exchange(self, name: str, decide: Callable[[dict[int, str]], Optional[str]],
                 poll: Optional[float] = None) -> dict[int, str]:
        """A barrier that also tells everyone what each process had to say: `decide(statuses so far)` is called
        until it returns this process's status (then written once, atomically), and the call returns the statuses
        of all processes once every one of them has written its own. Every process gets the same dict."""
        poll = self.poll if poll is None else poll
        paths = [self.directory / f"{name}.{rank}" for rank in range(self.world_size)]
        mine: Optional[str] = None
        deadline = time.monotonic() + self.timeout
        while True:
            statuses = {rank: path.read_text() for rank, path in enumerate(paths) if path.exists()}
            if mine is None:
                mine = decide(statuses)
                if mine is not None:
                    write_atomically(paths[self.rank], mine)
                    statuses[self.rank] = mine
            if len(statuses) == self.world_size:
                return statuses
            if time.monotonic() > deadline:
                missing = [path.name for rank, path in enumerate(paths) if rank not in statuses]
                raise TimeoutError(f"exchange {name!r}: still waiting for {missing} after {self.timeout:.0f}s")
            time.sleep(poll)


MATCHED, LEFT_OUT, ABANDONED = "matched", "left-out", "abandoned"  # statuses of `form_group`; or "failed: <why>"


def form_group(start_step: Callable[[], object], barrier: FileBarrier, tag: str, grace: float,
               max_attempts: int) -> tuple[Optional[object], list[dict]]:
    """hivemind matchmaking until every one of the barrier's processes is in the same group, ready to be triggered.

    `start_step()` starts one matchmaking: `averager.step(..., wait=False, require_trigger=True, allow_retries=False)`
    with `min_group_size` equal to the number of processes, so any group that forms holds all of them. hivemind's
    join protocol can still leave a peer out of the group that it completed: the leader accepts the request, adds
    the follower and assembles the group, but the reply reaches the follower after its `request_timeout` (a CPU
    stall of either side suffices), so the follower gives up and looks on, alone, until its own deadline, while the
    others hold a group that counts it (seen in benchmarks/strategies.py's smoke test: the follower's log says
    "potential leader ... did not respond within 0.5" while the leader logs "assembled group of 3 peers"). Nothing
    in hivemind ever resolves it: the follower fails after matchmaking_time + round_timeout, and the others, once
    triggered, wait for its parts for the whole allreduce_timeout.

    So each process reports through the barrier what its matchmaking came to. `matched`: its step awaits the
    trigger. `failed: <why>`: its step ended (hivemind's reason). `left-out`: another process matched `grace`
    seconds ago and this one is still looking, although the only group that can have formed contains it.
    `abandoned`: another process's attempt already failed. Unless all are `matched`, every process cancels its step
    (none was triggered, so no all-reduce started) and matchmaking starts over, at most `max_attempts` times.
    Returns the step control (None if no attempt matched everyone) and one dict per attempt: every process's
    status and when each of them matched (time.time()), the same lists in every process.
    """
    from hivemind.averaging.control import AveragingStage

    attempts: list[dict] = []
    for attempt in range(max_attempts):
        name = f"group-{tag}-{attempt}"
        control = start_step()
        first_other_matched: list[float] = []  # when this process first saw another one matched

        def decide(statuses: dict[int, str]) -> Optional[str]:
            if control.stage == AveragingStage.AWAITING_TRIGGER:
                # written before the status, so whoever reads a `matched` status finds its time
                write_atomically(barrier.directory / f"{name}.{barrier.rank}.time", repr(time.time()))
                return MATCHED
            if control.done():
                return f"failed: {_step_error(control)}"
            others = [status for rank, status in statuses.items() if rank != barrier.rank]
            if any(status != MATCHED for status in others):
                return ABANDONED
            if others:
                first_other_matched[:] = first_other_matched or [time.monotonic()]
                if time.monotonic() - first_other_matched[0] >= grace:
                    return LEFT_OUT
            return None

        statuses = barrier.exchange(name, decide, poll=0.005)  # not a timed start: no need to poll faster
        matched_at = {str(rank): float((barrier.directory / f"{name}.{rank}.time").read_text())
                      for rank, status in sorted(statuses.items()) if status == MATCHED}
        attempts.append(dict(statuses={str(rank): status for rank, status in sorted(statuses.items())},
                             matched_at=matched_at))
        if all(status == MATCHED for status in statuses.values()):
            return control, attempts
        _logger.warning(f"Matchmaking {name}: {statuses}; every peer cancels its step and matches again "
                        f"(hivemind may log the cancelled trigger as an error)")
        control.cancel()  # no process triggers a step of this attempt: cancelling them all starts no all-reduce
        _wait_until_finished(control)
        barrier.wait(f"{name}-cancelled")  # nobody looks for the next group while another still holds this one
    return None, attempts


async def _nothing(dht, node) -> None:
    return None


def shutdown_averager(averager, dht, timeout: float = 60.0) -> None:
    """Shut an averager down only once the DHT process has read every request it sent.

    A request to hivemind's DHT process carries an MPFuture with the sender's result pipe, which the DHT process
    fetches from the sender (multiprocessing's resource sharer) when it reads the request. If the sender is exiting
    at that moment, the fetch ends in EOFError, which `DHT._run` does not catch: the DHT process dies, and the next
    averager of this worker waits for it forever (seen in the averaging smoke test: "barrier 'fp16-ready': still
    waiting for ['fp16-ready.1']", the other worker's log ending in the DHT process's EOFError traceback). An
    averager's last requests are those its matchmaking cancels when a group forms; a DHT call from this process
    reads through the pipe past them. The averagers here also share no state, so they send nothing afterwards."""
    try:
        dht.run_coroutine(_nothing, return_future=True).result(timeout=timeout)
    except Exception as e:  # a DHT that is already gone: shut down anyway
        _logger.warning(f"The DHT did not answer before the averager's shutdown: {type(e).__name__}: {e}")
    averager.shutdown()


def _step_error(control) -> str:
    try:
        control.result(timeout=0)
    except BaseException as e:  # noqa: B902 - hivemind's reason, whatever it is
        return f"{type(e).__name__}: {e}"
    return "ended without awaiting the trigger"


def _wait_until_finished(control, timeout: float = 30.0) -> None:
    """A cancelled step is done at once here, but the averager's process leaves matchmaking a moment later."""
    from hivemind.averaging.control import AveragingStage

    deadline = time.monotonic() + timeout
    while control.stage != AveragingStage.FINISHED and time.monotonic() < deadline:
        time.sleep(0.01)


def write_results(results_dir: Path, name: str, report: dict, table: str,
                  plot: Callable[[dict, Path], None]) -> tuple[Path, Path, Path]:
    """Write <name>.json, <name>.md and <name>.png into `results_dir`; returns their paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = results_dir / f"{name}.json", results_dir / f"{name}.md", results_dir / f"{name}.png"
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(table + "\n")
    plot(report, paths[2])
    return paths


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
