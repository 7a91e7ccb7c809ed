#!/usr/bin/env python3
"""A bare hivemind peer for the network-lab scenarios: joins the DHT with the project's peer flags, then acts.

It takes the same peer flags as every trainer (`--initial_peers`, `--host_maddrs`, `--client_mode`,
`--use_auto_relay`, `--trusted_relays`, `--force_reachability`, ...), and reports what happened as one JSON object
per line on stdout (logs go to stderr), so a scenario script or a person can follow it:

    {"event": "ready", "peer_id": "12D3Koo...", "maddrs": [...]}          after joining
    {"event": "relayed", "maddrs": [".../p2p-circuit/p2p/12D3Koo..."]}    once reachable through a relay
    {"event": "stored", "key": ...} / {"event": "found", "key": ..., "value": ...}
    {"event": "averaged", "size": 1000, "mean": 2.0, "group": [...], ...}   one all-reduce round with others
    {"event": "connections", "peers": {"12D3Koo...": ["/ip4/.../p2p-circuit"]}}  the addresses in use

    python p2p/lab_peer.py --initial_peers /ip4/11.7.0.2/tcp/31337/p2p/12D3Koo... --use_auto_relay \\
        --trusted_relays /ip4/11.7.0.2/tcp/31337/p2p/12D3Koo... --average 1.0 --stay 30
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab.arguments import PeerArguments, parse_arguments
from collab.cli import check_stop, run_main, setup_logging
from collab.errors import UserError
from collab.peer import create_dht, visible_maddrs

logger = logging.getLogger(__name__)

RELAY_WAIT_S = 60.0
ROUND_TIMEOUT_S = 60.0  # one averaging round, and the wait for the other peers before it


@dataclass
class LabPeerArguments:
    name: str = field(default="peer", metadata=dict(help="This peer's name in the DHT records it stores."))
    store: Optional[str] = field(default=None, metadata=dict(help="Store this DHT key with the peer's name as value."))
    expect: list[str] = field(default_factory=list,
                              metadata=dict(help="Wait until these DHT keys exist (stored by other peers)."))
    wait_for_relay: bool = field(default=False, metadata=dict(
        help=f"Before acting, wait up to {RELAY_WAIT_S:.0f} s until this peer announces a relay (p2p-circuit) "
             f"address; exit 3 if it never does."))
    average: Optional[float] = field(default=None, metadata=dict(
        help="Run all-reduce rounds of a vector filled with this value with the other averaging peers."))
    average_sizes: list[int] = field(default_factory=lambda: [1000], metadata=dict(
        help="Values in the averaged vector: one round per size (e.g. 1000 100000)."))
    group_size: int = field(default=2, metadata=dict(help="Peers in the averaging round (everyone must agree)."))
    averaging_attempts: int = field(default=1, metadata=dict(
        help="Tries per round; a retry can pair this peer with another's next round, so keep 1 unless rounds "
             "are all alike."))
    stay: float = field(default=0.0, metadata=dict(
        help="Keep serving this many seconds after acting (others may still need this peer, e.g. a relay)."))


def emit(event: str, **fields) -> None:
    line = json.dumps(dict(event=event, time=time.time(), **fields))
    print(line, flush=True)
    logger.info(f"event: {line}")  # the log tells the whole story too


def wait_until(condition, timeout: float, period: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        check_stop()
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


async def _connections(_dht, node) -> dict[str, list[str]]:
    """The remote address of every open connection, by peer (a relayed one ends in /p2p-circuit)."""
    peers: dict[str, list[str]] = {}
    for info in await node.p2p.list_peers():
        peers.setdefault(info.peer_id.to_base58(), []).extend(str(addr) for addr in info.addrs)
    return peers


def relay_maddrs(dht) -> list[str]:
    return [str(maddr) for maddr in dht.get_visible_maddrs(latest=True) if "/p2p-circuit" in str(maddr)]


def average_rounds(dht, lab: LabPeerArguments) -> None:
    """One all-reduce round per entry of --average_sizes, in lock-step with the other --group_size peers: before
    each round every peer waits until all have arrived, so that one peer's failed round cannot leave it a round
    behind the others for the rest of the run."""
    for index, size in enumerate(lab.average_sizes):
        if not meet(dht, f"lab_round_{index}", lab.group_size, timeout=ROUND_TIMEOUT_S):
            emit("not_averaged", size=size, reason="the other peers did not arrive")
            continue
        averaged = average_once(dht, lab, size, prefix=f"lab_average_{index}")
        if averaged is None:
            emit("not_averaged", size=size, reason="no round succeeded")
        else:
            emit("averaged", size=size, **averaged)


def meet(dht, key: str, count: int, timeout: float) -> bool:
    """A barrier through the DHT: announce this peer under `key` and wait until `count` peers have."""
    dht.store(key, subkey=dht.peer_id.to_bytes(), value=True, expiration_time=time.time() + 600)

    def arrived() -> int:
        found = dht.get(key, latest=True)
        return len(found.value) if found is not None and isinstance(found.value, dict) else 0

    return wait_until(lambda: arrived() >= count, timeout, period=0.5)


def average_once(dht, lab: LabPeerArguments, size: int, prefix: str) -> Optional[dict]:
    import torch
    from hivemind.averaging import DecentralizedAverager

    # bounded timeouts: a transfer that stalls (e.g. a relay cutting the connection) ends the round instead of
    # hanging it; the peers that stalled are then left out and their part keeps local values
    averager = DecentralizedAverager([torch.full((size,), lab.average)], dht, prefix=prefix,
                                     target_group_size=lab.group_size, min_group_size=lab.group_size,
                                     client_mode=dht.client_mode, next_chunk_timeout=10.0, allreduce_timeout=60.0,
                                     start=True)
    try:
        for attempt in range(1, lab.averaging_attempts + 1):
            started = time.monotonic()
            try:
                group = averager.step(timeout=ROUND_TIMEOUT_S)
            except Exception as e:  # hivemind raises when no group formed or the round broke
                logger.warning(f"Averaging attempt {attempt} ({size} values) failed: {e}")
                continue
            if group:
                with averager.get_tensors() as tensors:
                    return dict(mean=tensors[0].mean().item(), min=tensors[0].min().item(),
                                max=tensors[0].max().item(), group=sorted(peer.to_base58() for peer in group),
                                seconds=time.monotonic() - started)
        return None
    finally:
        averager.shutdown()


def main() -> None:
    setup_logging()
    peer, lab = parse_arguments([PeerArguments, LabPeerArguments], description=__doc__)
    dht = create_dht(peer)
    try:
        emit("ready", peer_id=dht.peer_id.to_base58(), maddrs=visible_maddrs(dht), client_mode=dht.client_mode)
        if lab.wait_for_relay:
            if not wait_until(lambda: relay_maddrs(dht), RELAY_WAIT_S):
                emit("no_relay", waited=RELAY_WAIT_S)
                sys.exit(3)
            emit("relayed", maddrs=relay_maddrs(dht))
        if lab.store:
            dht.store(lab.store, lab.name, expiration_time=time.time() + 600)  # hivemind's DHT time is wall time
            emit("stored", key=lab.store)
        for key in lab.expect:
            if not wait_until(lambda: dht.get(key, latest=True) is not None, 60.0):
                raise UserError(f"DHT key {key!r} did not appear within 60 s")
            emit("found", key=key, value=dht.get(key, latest=True).value)
        if lab.average is not None:
            average_rounds(dht, lab)
        emit("connections", peers=dht.run_coroutine(_connections))
        if lab.stay > 0:
            wait_until(lambda: False, lab.stay)
            emit("connections", peers=dht.run_coroutine(_connections))  # e.g. after a relayed one became direct
        emit("done")
    finally:
        dht.shutdown()


if __name__ == "__main__":
    run_main(main)
