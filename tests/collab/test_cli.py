"""What a user sees when a script starts: one-line errors (exit 2) before anything slow; the first run's identity."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
import subprocess
import sys

import pytest
from hivemind.p2p import PeerID

from collab import cli
from collab.arguments import PeerArguments
from collab.cli import run_main
from collab.errors import UserError
from collab.lab.swarm import REPO_ROOT
from collab.peer import create_dht, ensure_identity

pytestmark = pytest.mark.timeout(180)


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "albert/run_trainer.py"), *args], capture_output=True,
                          text=True, timeout=150, cwd=REPO_ROOT)


def test_bad_initial_peers_are_reported_before_the_dataset_loads(tmp_path):
    # the dataset does not exist: had it been loaded first, the error would be about the dataset
    done = run_trainer("--initial_peers", "203.0.113.5:31337", "--dataset_path", str(tmp_path / "no-such-dataset"),
                       "--output_dir", str(tmp_path / "trainer"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.strip().splitlines()[-1]]  # one line, the last one
    assert errors[0].startswith("error: --initial_peers '203.0.113.5:31337' is not a multiaddr: hivemind 1.x needs")
    assert "/ip4/203.0.113.5/tcp/31337/p2p/" in errors[0] and "dataset" not in errors[0]
    assert not (tmp_path / "trainer").exists()


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # run_main's handlers are for scripts, not for pytest

    def main() -> None:
        raise UserError("two\nlines")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: two lines\n"


def test_first_run_creates_a_private_identity_and_later_runs_keep_it(tmp_path, caplog):
    path = tmp_path / "new-folder" / "coordinator.id"
    with caplog.at_level(logging.INFO, logger="collab.peer"):
        ensure_identity(str(path))
    key = path.read_bytes()
    peer_id = PeerID.from_identity(key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # a private key: its owner's only
    assert f"Created a new identity at {path} (peer ID {peer_id})" in caplog.text
    assert os.listdir(path.parent) == ["coordinator.id"]  # no temporary file left behind
    ensure_identity(str(path))
    assert path.read_bytes() == key


def test_every_peer_creates_its_missing_identity_and_libp2p_takes_it(tmp_path):
    path = tmp_path / "peer.id"
    dht = create_dht(PeerArguments(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(path)))
    try:
        assert dht.peer_id == PeerID.from_identity(path.read_bytes())
    finally:
        dht.shutdown()


def asyncio_records_of_a_round_that_lost_a_peer() -> list[logging.LogRecord]:
    """What asyncio itself logs when hivemind fails a round's future and a stream task and never reads either."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("asyncio").addHandler(handler)

    async def stream_task() -> None:
        raise ConnectionResetError("Connection lost")

    async def round_that_lost_a_peer() -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(asyncio.CancelledError())  # as AllReduceRunner.finalize(exception=...) does
        task = asyncio.create_task(stream_task())
        await asyncio.sleep(0.01)
        del future, task
        gc.collect()

    try:
        asyncio.run(round_that_lost_a_peer())
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    return records


def test_a_round_that_lost_a_peer_is_one_warning_line_not_a_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_ROUTINE_NETWORK_ERRORS", cli._routine_network_errors())
    records = asyncio_records_of_a_round_that_lost_a_peer()
    assert len(records) == 2 and all(record.exc_info for record in records)  # tracebacks, before the filter
    formatter = logging.Formatter("%(levelname)s %(message)s")
    lines = [formatter.format(record) for record in records if cli._readable_hivemind_records(record)]
    warning = logging.getLevelName(logging.WARNING)  # hivemind renames it "WARN"
    assert sorted(lines) == [f"{warning} An averaging round lost a peer midway (CancelledError)",
                             f"{warning} An averaging round lost a peer midway (ConnectionResetError Connection lost)"]


def test_other_unretrieved_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_ROUTINE_NETWORK_ERRORS", cli._routine_network_errors())
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved", (),
                               (ValueError, ValueError("a bug"), None))
    assert cli._readable_hivemind_records(record)
    assert record.exc_info is not None and record.levelno == logging.ERROR
