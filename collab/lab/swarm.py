"""Local swarms: start peers as separate OS processes, watch them, and always stop every one of them.

hivemind's DHT and averagers are fork-based child processes, so every peer must be its own process started
with subprocess (never multiprocessing). Each peer runs in its own process group with its output in a log
file; stopping sends SIGTERM (the scripts turn it into a clean shutdown), then SIGKILL to the whole group,
which also takes down the peer's libp2p daemon.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PeerProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class LocalSwarm:
    """A set of peer processes on this machine. Use as a context manager: leaving it stops every peer."""

    def __init__(self, log_dir: Path, env: Optional[dict] = None):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.peers: list[PeerProcess] = []

    def start(self, name: str, script: str, args: Sequence[str], env: Optional[dict] = None,
              wrap: Optional[Callable[[list[str]], list[str]]] = None, faults: str = "") -> PeerProcess:
        """Start `python <script> <args>` (script relative to the repository root), with extra `env` if given.

        `wrap` turns the command line into the one to run, e.g. `partial(lab.command, "home1")` runs the peer
        inside a host of a network lab (`ip netns exec` replaces itself with the peer, so signals still reach it).
        `faults` (a plan such as "nonfinite_loss@20+12", see collab/lab/faults.py) starts the script through the
        launcher `python -m collab.lab.with_faults --faults PLAN`, so that this peer misbehaves on purpose.
        """
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "w")
        launcher = ["-m", "collab.lab.with_faults", "--faults", faults] if faults else []
        argv = [sys.executable, *launcher, str(REPO_ROOT / script), *args]
        popen = subprocess.Popen(
            wrap(argv) if wrap else argv, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=dict(self.env, **(env or {})), cwd=REPO_ROOT, start_new_session=True,
        )
        log_file.close()
        peer = PeerProcess(name, popen, log_path)
        self.peers.append(peer)
        logger.debug(f"Started {name} (pid {popen.pid}), log: {log_path}")
        return peer

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str,
                   watch: Sequence[PeerProcess] = ()) -> None:
        """Poll `condition`; fail early with the log tail if a watched peer dies."""
        deadline = time.monotonic() + timeout
        while not condition():
            for peer in watch:
                if not peer.alive:
                    raise RuntimeError(f"{peer.name} exited with code {peer.popen.returncode} while waiting for "
                                       f"{what}; last lines of {peer.log_path}:\n{peer.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def wait_for_file(self, path: Path, timeout: float, watch: Sequence[PeerProcess] = ()) -> str:
        self.wait_until(path.exists, timeout, f"{path}", watch)
        return path.read_text().strip()

    def stop(self, peer: PeerProcess, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM (clean shutdown), then SIGKILL the peer's whole process group."""
        if peer.alive:
            peer.popen.send_signal(signal.SIGTERM)
            try:
                peer.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(f"{peer.name} did not stop within {timeout:.0f}s: killing it")
        _kill_group(peer.popen.pid)
        peer.popen.wait()
        return peer.popen.returncode

    def kill(self, peer: PeerProcess) -> None:
        """SIGKILL without warning, as a crash or a preempted machine would."""
        _kill_group(peer.popen.pid)
        peer.popen.wait()

    def stop_all(self, timeout: float = 20.0) -> None:
        for peer in self.peers:  # signal everyone first, so they shut down in parallel
            if peer.alive:
                peer.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for peer in self.peers:
            try:
                peer.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(f"{peer.name} did not stop within {timeout:.0f}s: killing it")
            _kill_group(peer.popen.pid)
            peer.popen.wait()

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """A script given bad input exits with 2 and ends with one `error:` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and expected in last_line, last_line
    assert "Traceback" not in result.stderr
