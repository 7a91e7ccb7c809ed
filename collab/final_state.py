"""Ending a run in step: all trainers that stop at --max_steps save the same parameters.

Rounds that missed a peer (slow or overloaded machines) can leave a peer's parameters apart from the others'
at the last step. So the run ends with a small agreement built on hivemind's own state sharing:

1. every finished peer that holds the swarm's model (collab.sync: not out of sync) offers its state with a
   state-sharing priority above any step number, plus a tie-break derived from its peer ID that every peer
   computes the same way, and publishes a probe of its final parameters;
2. it waits until the progress records of all trainers show the last step, and until every trainer that can
   offer (all but client-mode ones) has offered;
3. all but the top-priority peer download the top peer's state (hivemind downloads from the highest
   priority first), check by the probe that what arrived is the top peer's state (hivemind silently falls
   back to the next donor when one dies), and only then record in the DHT that they took it; client-mode
   peers cannot offer, but take it too;
4. the top peer keeps serving until every trainer has recorded it, bounded by --final_sync_timeout.

When no trainer can serve (every one in client mode), there is nothing to agree through: each trainer says so
in one line, with how far its final parameters are from the others' (from the published probes).
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Optional

import hivemind
from hivemind.utils import get_dht_time

from collab.cli import check_stop
from collab.optimizer import COORDINATOR_PRIORITY_OFFSET

logger = logging.getLogger(__name__)

OFFER_PROPAGATION_S = 3.0  # time for a changed state-sharing priority to reach the DHT
LATE_TRAINER_GRACE_S = 20.0  # the chosen peer serves this much longer for trainers it could not count
FINAL_DOWNLOAD_ATTEMPTS = 3


class FinalStateAgreement:
    def __init__(self, optimizer: hivemind.Optimizer, max_steps: int, timeout: float):
        self.opt, self.max_steps, self.timeout = optimizer, max_steps, timeout
        self.own_id = optimizer.state_averager.peer_id.to_bytes()

    def run(self, save: Optional[Callable[[], object]] = None) -> None:
        self.opt.state_averager.step(wait_for_delayed_updates=True, apply_delayed_updates=True)
        if getattr(self.opt, "in_sync", True) is False and getattr(self.opt, "resync", None) is not None:
            self.opt.resync()  # an out-of-sync peer neither offers nor is a candidate: it takes the state
        offering_self = not self.opt.client_mode and getattr(self.opt, "in_sync", True)
        if offering_self:
            self.opt.state_averager.state_sharing_priority = self.offer_priority()
        self._publish_probe()
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
        if top_peer is None:
            self._take_from_follower(deadline)
        elif top_peer != self.own_id:
            logger.info(f"Taking the swarm's final state from the peer chosen by all ({len(offers)} offered it)")
            if not self.opt.client_mode:
                self.opt.state_averager.state_sharing_priority = float(self.max_steps)  # no longer offering
            if self._take_from(top_peer, deadline):
                self._record_taken()
        else:
            self._record_taken()
        if save is not None:
            save()
        if top_peer == self.own_id:
            self._wait(lambda: self._count_taken() >= trainers, deadline,
                       f"for the other {trainers - 1} trainer(s) to take the final state")
            # a trainer more than one step behind publishes no progress record, so it was not counted: keep serving
            # a little longer for it (seen: a client-mode trainer took the state 9 s after the count was reached)
            time.sleep(min(LATE_TRAINER_GRACE_S, max(0.0, deadline - time.monotonic())))

    def _take_from(self, donor: bytes, deadline: float, expected: Optional[list[float]] = None) -> bool:
        """Download the final state until what arrived is the donor's (by its published probe)."""
        for attempt in range(1, FINAL_DOWNLOAD_ATTEMPTS + 1):
            loaded = self.opt.load_state_from_peers()
            expected = expected if expected is not None else self._probes().get(donor)
            if loaded and expected is not None and self._own_probe() == expected:
                return True
            problem = "no state arrived" if not loaded else "what arrived is not the chosen peer's state"
            if attempt == FINAL_DOWNLOAD_ATTEMPTS or time.monotonic() > deadline:
                logger.error(f"Could not take the swarm's final state ({problem}, {attempt} attempts): this "
                             f"trainer's final model may differ from the others'")
                return False
            logger.warning(f"Taking the final state: {problem}; trying again")
            time.sleep(OFFER_PROPAGATION_S)
        return False

    def _take_from_follower(self, deadline: float) -> None:
        """No trainer can serve (all in client mode): take the state of the coordinator's follower (collab.follower),
        which followed the same steps, checked against the record it published for the last step."""
        follower = lambda: {peer: priority for peer, priority in self.opt.state_averager.donors().items()
                            if priority >= self.max_steps + COORDINATOR_PRIORITY_OFFSET}
        self._wait(lambda: bool(follower()), deadline, "for the coordinator to finish the last step")
        donors = follower()
        if not donors:
            self._report_without_donor()
            return
        donor = max(donors, key=donors.get)
        logger.info("No trainer can serve the final state (all in client mode): taking the coordinator's")
        records = {bytes.fromhex(record.peer): record for record in
                   self.opt.sync_check.records(self.max_steps)} if getattr(self.opt, "sync_check", None) else {}
        expected = records[donor].parameters if donor in records else None
        if self._take_from(donor, deadline, expected):
            self._record_taken()

    def _report_without_donor(self) -> None:
        gaps = [max((abs(a - b) for a, b in zip(self._own_probe(), probe)), default=0.0)
                for peer, probe in self._probes().items() if peer != self.own_id]
        gap = f"its final parameters are up to {max(gaps):.3g} from the other trainers'" if gaps else "no other probe"
        logger.warning(f"No trainer could serve the final state (all in client mode, or none in sync): {gap}")

    def _own_probe(self) -> list[float]:
        probe = getattr(self.opt, "sync_probe", None)
        return probe.values() if probe is not None else []

    def _probe_key(self) -> str:
        return f"{self.opt.run_id}_final_probe"

    def _publish_probe(self) -> None:
        self.opt.dht.store(self._probe_key(), subkey=self.own_id, value=self._own_probe(),
                           expiration_time=get_dht_time() + self.timeout)

    def _probes(self) -> dict[bytes, list[float]]:
        found = self.opt.dht.get(self._probe_key(), latest=True)
        if found is None or not isinstance(found.value, dict):
            return {}
        return {peer: entry.value for peer, entry in found.value.items() if isinstance(entry.value, list)}

    def offer_priority(self) -> float:
        """Above every step number; the fraction is a tie-break that all peers compute the same way."""
        tie_break = int.from_bytes(hashlib.sha256(self.own_id).digest()[:6], "big") / 2**48
        return float(self.max_steps + 1) + tie_break

    def _offers(self) -> dict[bytes, float]:
        """Peers currently offering their final state (priority above max_steps), this one included."""
        offers = {peer: priority for peer, priority in self.opt.state_averager.donors().items()
                  if priority >= self.max_steps + 1}  # an offer (a follower past the end is none)
        own = self.opt.state_averager.state_sharing_priority
        if not self.opt.client_mode and own >= self.max_steps + 1:
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
