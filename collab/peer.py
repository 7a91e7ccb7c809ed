"""Joining the swarm: the DHT node, the line other peers need to join, and the swarm's configuration check."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Sequence

import hivemind
from hivemind.dht.validation import RecordValidatorBase
from hivemind.p2p import P2P, PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.multiaddr import Multiaddr

from collab.arguments import INITIAL_PEERS_EXAMPLE, PeerArguments, validate_initial_peers  # noqa: F401 (re-exported)
from collab.errors import UserError

logger = logging.getLogger(__name__)

DIAL_TIMEOUT = 5.0  # seconds to re-dial one initial peer


def ensure_identity(identity_path: Optional[str]) -> None:
    """Create the --identity_path key on the first run, so that the peer ID (and the --initial_peers line) lasts.

    hivemind 1.1.12 would create it too, but inside the DHT's process, without saying which peer ID it got, and with a
    traceback when the folder is missing. Here it is written with hivemind's own key type (RSA, libp2p's protobuf),
    readable by its owner only, and never over a key that appeared meanwhile (link, not rename).
    """
    if identity_path is None or Path(identity_path).exists():
        return
    key = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=RSAPrivateKey().to_bytes()).SerializeToString()
    path = Path(identity_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return  # another process created it first: use that one
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(f"Created a new identity at {path} (peer ID {PeerID.from_identity(key)})")


def _use_only_trusted_relays() -> None:
    """Make the libp2p daemon reserve on the --trusted_relays at once instead of searching for candidates first.

    hivemind 1.1.12 passes `-trustedRelays` but never `-relayDiscovery=0`, so the daemon keeps discovery on:
    go-libp2p's autorelay then feeds the trusted relays as mere candidates and reserves a slot only once it has
    4 candidates or after its 3-minute boot delay (seen in the network lab: no relay address for 3 minutes with one
    relay; with discovery off, the reservation came within a second). hivemind has no option for this flag, so we
    add it where hivemind builds the daemon's command line; the DHT's process is forked later and inherits it.
    """
    if getattr(P2P._make_process_args, "_static_relays", False):
        return
    build_args = P2P._make_process_args

    def with_static_relays(*args, **kwargs):
        if kwargs.get("trustedRelays") and kwargs.get("autoRelay"):
            kwargs["relayDiscovery"] = False
        return build_args(*args, **kwargs)

    with_static_relays._static_relays = True
    P2P._make_process_args = staticmethod(with_static_relays)


def require_initial_peers(args: PeerArguments, role: str) -> None:
    """Trainers and aux peers join an existing swarm; only the coordinator starts one."""
    if not args.initial_peers:
        raise UserError(f"a {role} needs --initial_peers: start the coordinator (run_first_peer.py) first and pass "
                        f"the --initial_peers line it prints")


def create_dht(
    args: PeerArguments, record_validators: Iterable[RecordValidatorBase] = (), **kwargs
) -> hivemind.DHT:
    """Start this peer's DHT node; unreachable initial peers become a one-line UserError."""
    initial_peers = validate_initial_peers(args.initial_peers)
    ensure_identity(args.identity_path)
    if args.trusted_relays:
        kwargs["trusted_relays"] = validate_initial_peers(args.trusted_relays, flag="--trusted_relays")
        _use_only_trusted_relays()
    try:
        return hivemind.DHT(
            start=True,
            initial_peers=initial_peers,
            client_mode=args.client_mode,
            host_maddrs=args.host_maddrs,
            announce_maddrs=args.announce_maddrs or None,
            identity_path=args.identity_path,
            use_ipfs=args.use_ipfs,
            use_relay=args.use_relay,
            use_auto_relay=args.use_auto_relay,
            force_reachability=args.force_reachability,
            startup_timeout=args.startup_timeout,
            record_validators=record_validators,
            **kwargs,
        )
    except Exception as e:
        message = str(e)
        if "bootstrap" in message or "none of the initial_peers" in message:
            raise UserError(
                f"could not reach any of --initial_peers {' '.join(initial_peers)}: check that the coordinator is "
                f"running, the address and port are right and not firewalled"
            ) from None
        if "Daemon failed to start" in message:
            raise UserError(f"the libp2p daemon did not start ({message}); try a larger --startup_timeout") from None
        raise


class InitialPeerReconnector:
    """Every `period` seconds, dial the --initial_peers again, put them back in the DHT's routing table and lift
    their ban.

    A DHT node drops peers that stop answering and bans them for 5 s, twice as long after each further failure.
    While the coordinator (often the only initial peer) is down, a busy node fails many requests to it, so it may
    shun the restarted coordinator for minutes; if the other peers it knew were restarted under new IDs meanwhile,
    it knows nobody alive and trains alone (seen in chaos runs on a GPU machine; reproduced in
    tests/collab/test_peer.py). Dialling the initial peers again heals that as soon as they are back; otherwise it
    costs one ping.
    """

    def __init__(self, dht: hivemind.DHT, initial_peers: Sequence[str], period: float = 10.0):
        self.dht, self.initial_peers, self.period, self.last = dht, list(initial_peers), period, time.monotonic()
        self.pending = None  # the latest reconnection (a future)

    def maybe_reconnect(self) -> None:
        if self.pending is not None and not self.pending.done():
            return  # the previous attempt is still dialling (dropping its future would abort it mid-way)
        if self.initial_peers and time.monotonic() - self.last >= self.period:
            self.last = time.monotonic()  # runs inside the DHT process, in the background; failures are routine
            self.pending = self.dht.run_coroutine(partial(_reconnect, initial_peers=self.initial_peers),
                                                  return_future=True)


_RUNNING: set = set()  # in the DHT process: strong references to running reconnections (see below)


async def _reconnect(_dht: hivemind.DHT, node, initial_peers: Sequence[str]) -> None:
    # hivemind's DHT keeps no reference to the task that runs this coroutine; asyncio holds tasks weakly, so a
    # task waiting on the daemon can be garbage-collected mid-way (seen: GeneratorExit). Hold it until it ends.
    task = asyncio.current_task()
    _RUNNING.add(task)
    try:
        await _dial_initial_peers(node, initial_peers)
    finally:
        _RUNNING.discard(task)


_BROKEN_REPORTED: list[str] = []  # said once per process


async def _dial_initial_peers(node, initial_peers: Sequence[str]) -> None:
    for maddr in initial_peers:
        address, peer_id = maddr.rsplit("/p2p/", 1)
        try:
            peer_id = PeerID.from_base58(peer_id)
            await asyncio.wait_for(node.p2p._client.connect(peer_id, [Multiaddr(address)]), DIAL_TIMEOUT)
            node_id = await node.protocol.call_ping(peer_id)
            if node_id is not None:
                await node.protocol.update_routing_table(node_id, peer_id, responded=True)
                if peer_id in node.blacklist:  # banned while it was down, for longer after each failed request
                    node.blacklist.register_success(peer_id)
        except (AttributeError, TypeError) as e:  # hivemind's internals changed: re-dialling silently does nothing
            if not _BROKEN_REPORTED:
                _BROKEN_REPORTED.append(repr(e))
                logger.error(f"Re-dialling initial peers is broken (hivemind internals changed?): {e!r}")
            return
        except Exception as e:
            logger.debug(f"Initial peer {peer_id} is still unreachable: {e!r}")


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    """Addresses others can use to join, non-loopback first."""
    maddrs = [str(maddr) for maddr in dht.get_visible_maddrs()]
    return sorted(maddrs, key=lambda maddr: ("/127.0.0.1/" in maddr or "/::1/" in maddr, maddr))


def announce_initial_peers(dht: hivemind.DHT, save_to: Optional[Path] = None) -> str:
    """Log (and optionally save) the exact `--initial_peers ...` argument other peers should pass."""
    line = "--initial_peers " + " ".join(visible_maddrs(dht))
    logger.info(f"To join this swarm, start other peers with: {line}")
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        tmp = save_to.with_suffix(".tmp")
        tmp.write_text(line + "\n")
        tmp.replace(save_to)
    return line


def config_key(run_id: str) -> str:
    return f"{run_id}_config"


def fingerprint(config: dict) -> str:
    """Short stable hash of the settings every peer of a run must share."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def check_swarm_config(dht: hivemind.DHT, run_id: str, config: dict) -> None:
    """Refuse to join when live peers of this run declared different shared settings (model shape, batch, ...)."""
    found = dht.get(config_key(run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return
    mine = fingerprint(config)
    for other_hash, record in found.value.items():
        other = record.value
        if other_hash == mine or not isinstance(other, dict):
            continue
        differences = sorted(key for key in set(config) | set(other) if config.get(key) != other.get(key))
        details = ", ".join(f"{key}: swarm={other.get(key)!r} here={config.get(key)!r}" for key in differences[:4])
        raise UserError(
            f"this peer's settings differ from the swarm of --run_id {run_id} ({details}); "
            f"use the same model and optimizer settings as the other peers, or another --run_id"
        )


def declare_swarm_config(dht: hivemind.DHT, run_id: str, config: dict, expiration: float):
    """Publish the shared settings so that a mismatching newcomer is refused (see check_swarm_config).

    Returns the store's future: callers go on without waiting; tests wait for it.
    """
    return dht.store(
        config_key(run_id), subkey=fingerprint(config), value=config,
        expiration_time=get_dht_time() + expiration, return_future=True,
    )
