"""The coordinator's embedded metrics store (SQLite): one row per global step and one per peer and step.

Kept deliberately plain so that a dashboard, a notebook or `sqlite3` can read it while the monitor writes
(WAL mode lets readers and the writer work at the same time).
"""
from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Mapping

from collab.metrics import GlobalMetrics, LocalMetrics

SCHEMA = """
CREATE TABLE IF NOT EXISTS global_steps (
    step INTEGER PRIMARY KEY, time REAL, loss REAL, alive_peers INTEGER, samples INTEGER,
    samples_per_second REAL, mini_steps INTEGER
);
CREATE TABLE IF NOT EXISTS peer_metrics (
    step INTEGER, peer TEXT, time REAL, loss_sum REAL, mini_steps INTEGER, samples INTEGER,
    samples_per_second REAL, outcome TEXT, trainers_averaged INTEGER, aux_in_group INTEGER,
    rounds_failed INTEGER, rounds_partial INTEGER, resyncs INTEGER, PRIMARY KEY (step, peer)
);
CREATE TABLE IF NOT EXISTS checkpoints (step INTEGER PRIMARY KEY, time REAL, path TEXT);
"""
PEER_COLUMNS = ("step", "peer", "time", "loss_sum", "mini_steps", "samples", "samples_per_second", "outcome",
                "trainers_averaged", "aux_in_group", "rounds_failed", "rounds_partial", "resyncs")


class MetricsStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(path), timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A store written by an older coordinator lacks the newer per-peer columns: add them (empty)."""
        present = {row[1] for row in self.connection.execute("PRAGMA table_info(peer_metrics)")}
        with self.connection:
            for column in PEER_COLUMNS:
                if column not in present:
                    self.connection.execute(f"ALTER TABLE peer_metrics ADD COLUMN {column}")

    def add_step(self, step: GlobalMetrics, peers: Mapping[str, LocalMetrics]) -> None:
        now = time.time()
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO global_steps VALUES (:step, :time, :loss, :alive_peers, :samples, "
                ":samples_per_second, :mini_steps)", dict(dataclasses.asdict(step), time=now),
            )
            self.connection.executemany(
                f"INSERT OR REPLACE INTO peer_metrics ({', '.join(PEER_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(PEER_COLUMNS))})",
                [(record.step, peer, now, record.loss_sum, record.mini_steps, record.samples_accumulated,
                  record.samples_per_second, record.outcome, record.trainers_averaged, record.aux_in_group,
                  record.rounds_failed, record.rounds_partial, record.resyncs) for peer, record in peers.items()],
            )

    def add_checkpoint(self, step: int, path: Path) -> None:
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (step, time.time(), str(path)))

    def global_steps(self) -> list[dict]:
        return self._rows("SELECT * FROM global_steps ORDER BY step")

    def peer_metrics(self) -> list[dict]:
        return self._rows("SELECT * FROM peer_metrics ORDER BY step, peer")

    def checkpoints(self) -> list[dict]:
        return self._rows("SELECT * FROM checkpoints ORDER BY step")

    def _rows(self, query: str) -> list[dict]:
        cursor = self.connection.execute(query)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self.connection.close()


def read_store(path: Path) -> dict[str, list[dict]]:
    """Everything in a store, for summaries and tests (opens read-only, works while the monitor runs)."""
    store = MetricsStore.__new__(MetricsStore)
    store.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(global_steps=store.global_steps(), peer_metrics=store.peer_metrics(),
                    checkpoints=store.checkpoints())
    finally:
        store.close()
