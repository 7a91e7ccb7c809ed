"""Joining and staying in the swarm (collab/peer.py), on real DHT nodes over loopback."""
import time

import hivemind
from hivemind.utils import get_dht_time

from collab.lab.chaos import free_port
from collab.peer import InitialPeerReconnector

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def test_reconnecting_to_a_restarted_coordinator_heals_a_partition(tmp_path):
    """A trainer that dropped the coordinator while it was down must find peers that joined after its restart."""
    coordinator_address = [f"/ip4/127.0.0.1/tcp/{free_port()}"]
    identity = str(tmp_path / "coordinator.id")
    coordinator = hivemind.DHT(start=True, host_maddrs=coordinator_address, identity_path=identity)
    initial_peers = [str(maddr) for maddr in coordinator.get_visible_maddrs()]
    trainer = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=initial_peers)
    coordinator.shutdown()
    for _ in range(3):  # requests while the coordinator is down: the trainer drops it from its routing table
        trainer.get("anything", latest=True)
    restarted = hivemind.DHT(start=True, host_maddrs=coordinator_address, identity_path=identity)
    newcomer = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=initial_peers)
    try:
        newcomer.store("progress", subkey="newcomer", value=1, expiration_time=get_dht_time() + 60)
        assert trainer.get("progress", latest=True) is None  # partitioned: the failure this guards against
        reconnector = InitialPeerReconnector(trainer, initial_peers, period=0)
        found, deadline = None, time.monotonic() + 30
        while found is None and time.monotonic() < deadline:  # a few rounds at most, as in a trainer's loop
            reconnector.maybe_reconnect()
            reconnector.pending.result(timeout=30)
            found = trainer.get("progress", latest=True)
        assert found is not None and "newcomer" in found.value
    finally:
        for node in (newcomer, restarted, trainer):
            node.shutdown()
