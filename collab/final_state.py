"""Ending a run in step: all trainers that stop at --max_steps save the same parameters.

Rounds that missed a peer (slow or overloaded machines) can leave a peer's parameters apart from the others'
at the last step. So the run ends with a small agreement built on hivemind's own state sharing:

1. every finished peer offers its state with a state-sharing priority above any step number, plus a
   tie-break derived from its peer ID that every peer computes the same way;
2. it waits until the progress records of all trainers show the last step, and until every trainer that can
   offer (all but client-mode ones) has offered;
3. all but the top-priority peer download the top peer's state (hivemind downloads from the highest
   priority first) and record in the DHT that they did; client-mode peers cannot offer, but take it too;
4. the top peer keeps serving until every trainer has recorded it, bounded by --final_sync_timeout.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Optional

import hivemind
from hivemind.utils import get_dht_time

from collab.cli import check_stop

logger = logging.getLogger(__name__)

OFFER_PROPAGATION_S = 3.0  # time for a changed state-sharing priority to reach the DHT
LATE_TRAINER_GRACE_S = 20.0  # the chosen peer serves this much longer for trainers it could not count


class FinalStateAgreement:
    def __init__(self, optimizer: hivemind.Optimizer, max_steps: int, timeout: float):
        self.opt, self.max_steps, self.timeout = optimizer, max_steps, timeout
        self.own_id = optimizer.state_averager.peer_id.to_bytes()

    def run(self, save: Optional[Callable[[], object]] = None) -> None:
        self.opt.state_averager.step(wait_for_delayed_updates=True, apply_delayed_updates=True)
        if not self.opt.client_mode:
            self.opt.state_averager.state_sharing_priority = self.offer_priority()
        deadline = time.monotonic() + self.timeout
        self._wait(lambda: all(record["epoch"] >= self.max_steps for record in self._trainer_records()), deadline,
                   "for all trainers to finish the last step")
        records = self._trainer_records()
        trainers, offering = len(records), sum(not record["client_mode"] for record in records)
        # a peer that finished last may not have offered yet: choosing without it would split the swarm (seen in the
        # chaos test). Once anyone has taken the chosen state, the choice is made: the top peer keeps offering.
        self._wait(lambda: len(self._offers()) >= offering or self._count_taken() > 0, deadline,
                   f"for all {offering} finished trainers' offers")
        time.sleep(OFFER_PROPAGATION_S)
        offers = self._offers()
        top_peer = max(offers, key=offers.get) if offers else None
        if top_peer is not None and top_peer != self.own_id:
            logger.info(f"Taking the swarm's final state from the peer chosen by all ({len(offers)} offered it)")
            self.opt.load_state_from_peers()
            if not self.opt.client_mode:
                self.opt.state_averager.state_sharing_priority = float(self.max_steps)  # no longer offering
        self._record_taken()
        if save is not None:
            save()
        if top_peer == self.own_id:
            self._wait(lambda: self._count_taken() >= trainers, deadline,
                       f"for the other {trainers - 1} trainer(s) to take the final state")
            # a trainer more than one step behind publishes no progress record, so it was not counted: keep serving
            # a little longer for it (seen: a client-mode trainer took the state 9 s after the count was reached)
            time.sleep(min(LATE_TRAINER_GRACE_S, max(0.0, deadline - time.monotonic())))

    def offer_priority(self) -> float:
        """Above every step number; the fraction is a tie-break that all peers compute the same way."""
        tie_break = int.from_bytes(hashlib.sha256(self.own_id).digest()[:6], "big") / 2**48
        return float(self.max_steps + 1) + tie_break

    def _offers(self) -> dict[bytes, float]:
        """Peers currently offering their final state (priority above max_steps), this one included."""
        offers = {peer: priority for peer, priority in self.opt.state_averager.donors().items()
                  if priority > self.max_steps}
        own = self.opt.state_averager.state_sharing_priority
        if not self.opt.client_mode and own > self.max_steps:
            offers[self.own_id] = own
        return offers

    def _trainer_records(self) -> list[dict]:
        """Epoch and client mode from the live progress records of this run's trainers (hivemind's ProgressTracker;
        auxiliary peers publish none)."""
        found = self.opt.dht.get(self.opt.tracker.training_progress_key, latest=True)
        if found is None or not isinstance(found.value, dict):
            return []
        return [dict(epoch=entry.value["epoch"], client_mode=bool(entry.value.get("client_mode")))
                for entry in found.value.values()
                if isinstance(entry.value, dict) and isinstance(entry.value.get("epoch"), int)]

    def _taken_key(self) -> str:
        return f"{self.opt.run_id}_final_state"

    def _record_taken(self) -> None:
        self.opt.dht.store(self._taken_key(), subkey=self.opt.dht.peer_id.to_bytes(), value=True,
                           expiration_time=get_dht_time() + self.timeout)

    def _count_taken(self) -> int:
        found = self.opt.dht.get(self._taken_key(), latest=True)
        return len(found.value) if found is not None and isinstance(found.value, dict) else 0

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        announced = False
        while time.monotonic() < deadline:
            check_stop()
            if condition():
                return
            if not announced:
                logger.info(f"Waiting up to {self.timeout:.0f}s {what}")
                announced = True
            time.sleep(1.0)
        logger.info(f"Stopped waiting {what}")
