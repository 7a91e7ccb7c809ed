"""Helpers shared by the benchmark scripts: machine description, summaries of repeated timings, file barriers
between worker processes, and writing the JSON / markdown / PNG triple into benchmarks/results/."""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]

# The parameter count of the paper's model as this project builds it: albert/model.py's "albert-large" preset with
# the 30,000-token vocabulary of albert-large-v2 (AlbertForPreTraining, tied decoder counted once).
ALBERT_LARGE_PARAMETERS = 17_847_474


def setup_worker_logging() -> None:
    """Logging of an averaging worker process: quiet, except why a round left a peer with part of the result."""
    import logging

    from collab.cli import setup_logging

    setup_logging(logging.WARNING)  # hivemind narrates every round at INFO; the harness reads the JSON instead
    # Why a peer of a round got only part of the result is logged by hivemind at DEBUG only: keep it in the log.
    logging.getLogger("hivemind.averaging.allreduce").setLevel(logging.DEBUG)
    logging.getLogger("hivemind.averaging.matchmaking").setLevel(logging.DEBUG)  # TEMP diagnosis


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
