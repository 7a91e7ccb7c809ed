"""A small internet out of Linux network namespaces on this machine: public hosts, NAT routers, private hosts.

Every host is its own network namespace, and so is the "internet" itself: a bridge that public hosts and the
public side of each router plug into. Veth pairs are created directly between two lab namespaces, so the root
namespace gets no interface, address or route, and every lab address exists only inside the lab. Each lab owns a
block number X: its internet is 11.X.0.0/24 and router N's home network is 10.X.N.0/24. The internet uses a
globally routable range on purpose: libp2p treats RFC 1918 addresses as private and never advertises a relay at
such an address (go-libp2p's autorelay drops them), so a lab internet on 10.X would make every relay useless.
11.0.0.0/8 is not announced on the real internet, and nothing in the lab has a route out of it anyway.

A router masquerades its private subnet behind its public address and silently drops connections that start
on the public side, to itself or to the hosts behind it, as a home router does. tc has no netem here, so links
have bandwidth caps (tbf, both directions) but no delay or loss.

Names are `<prefix><owner pid>-<block>[-<host>]` (e.g. `dlab-4711-23-relay`): the block is chosen under a lock
among those no namespace of the prefix uses, so two labs never share names or addresses, and the pid lets
`cleanup_stale` remove what a killed lab left behind. Teardown always runs: on leaving the `with` block (also on
an exception or Ctrl-C), on SIGTERM (turned into KeyboardInterrupt while a lab is open), and at exit.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from collab.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "dlab-"
_LOCK_PATH = Path("/run/collab-netlab.lock")  # serialises block allocation between labs (any process)
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_PREFIX = re.compile(r"^[a-z]{1,15}-$")  # no digits: the pid that follows must parse unambiguously
_TOOL_PACKAGES = {"ip": "iproute2", "iptables": "iptables", "tc": "iproute2"}
_STOP_GRACE_S = 3.0
PUBLIC_OCTET, PRIVATE_OCTET = 11, 10  # first octets of the lab internet and of the home networks behind routers


@dataclass
class Host:
    name: str
    kind: str  # "public", "router" or "private"
    namespace: str
    address: str  # public address for public hosts and routers, private address for private hosts
    router: Optional[str] = None  # private hosts: the router they sit behind
    lan_prefix: Optional[str] = None  # routers: the first three octets of their private /24
    bandwidth_mbit: Optional[float] = None


def require_root(euid: Optional[int] = None) -> None:
    """Network namespaces need root; `euid` is for tests (defaults to this process's)."""
    if (os.geteuid() if euid is None else euid) != 0:
        raise UserError("the network lab needs root (network namespaces): run as root, e.g. sudo ...")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"the network lab needs `{name}`, which is not installed: "
                        f"apt-get install -y {_TOOL_PACKAGES.get(name, name)}")
    return path


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces of `prefix` whose owner process is gone (a lab killed with SIGKILL); returns them."""
    stale = [ns for ns in _list_namespaces() if (ids := _parse_name(ns, prefix)) and not _pid_alive(ids[0])]
    _kill_namespace_processes(stale)
    for ns in stale:
        _delete_namespace(ns)
    if stale:
        logger.info(f"Removed {len(stale)} namespaces left by dead labs: {' '.join(stale)}")
    return stale


class NetworkLab:
    """A private internet of namespaces. Use as a context manager; leaving it tears everything down."""

    def __init__(self, name_prefix: Optional[str] = None):
        self.prefix = DEFAULT_PREFIX if name_prefix is None else name_prefix
        if not _PREFIX.match(self.prefix):
            raise UserError(f"bad lab name prefix {self.prefix!r}: use 1-15 lowercase letters and a final '-', "
                            f"e.g. {DEFAULT_PREFIX!r}")
        self.base: Optional[str] = None  # the internet's namespace; every host's namespace starts with it
        self.block: Optional[int] = None  # the lab's addresses are 11.<block>.0.0/24 and 10.<block>.*
        self.hosts: dict[str, Host] = {}
        self._processes: list[subprocess.Popen] = []
        self._next_link = 0  # numbers the peer ends of veths ("v1", "v2", ...), unique within the lab
        self._next_public = 1
        self._next_private: dict[str, int] = {}
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> "NetworkLab":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self._started:
            raise UserError("this lab was already started: create a new NetworkLab for each `with` block")
        require_root()
        require_tool("ip")
        if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
            raise UserError("`ip netns` does not work on this machine: the network lab needs network namespaces")
        cleanup_stale(self.prefix)
        self._started = True
        atexit.register(self.close)
        _hold_sigterm()
        try:
            with _allocation_lock():
                block = self._free_block()
                _create_namespace(f"{self.prefix}{os.getpid()}-{block}")
                self.block, self.base = block, f"{self.prefix}{os.getpid()}-{block}"
            _ip("-n", self.base, "link", "add", "pub", "type", "bridge")
            _ip("-n", self.base, "link", "set", "pub", "up")
        except BaseException:
            self.close()
            raise
        logger.info(f"Network lab {self.base}: internet at {PUBLIC_OCTET}.{self.block}.0.0/24")

    def close(self) -> None:
        """Stop every process, then delete every namespace. Safe to call twice; Ctrl-C waits until it is done."""
        if self._closed or not self._started:
            return
        self._closed = True
        try:
            with _signals_deferred():
                atexit.unregister(self.close)
                self._stop_processes()
                namespaces = [host.namespace for host in self.hosts.values()] + ([self.base] if self.base else [])
                _kill_namespace_processes(namespaces)
                for ns in namespaces:  # hosts first: deleting a namespace also deletes the veths into it
                    _delete_namespace(ns)
                if self.base:
                    logger.info(f"Network lab {self.base} torn down")
        finally:
            _release_sigterm()

    # -- building ---------------------------------------------------------------------------------------------

    def add_public_host(self, name: str, bandwidth_mbit: Optional[float] = None) -> Host:
        """A host with a public address on the internet segment."""
        host = self._new_host(name, "public", self._public_address(), bandwidth_mbit=bandwidth_mbit)
        peer = self._plug(host.namespace, "eth0", self.base, "pub", host.address)
        self._cap(host, peer_ns=self.base, peer_dev=peer)
        logger.info(f"Lab {self.base}: public host {name} at {host.address}{_rate(bandwidth_mbit)}")
        return host

    def add_router(self, name: str) -> Host:
        """A NAT router: public address on the internet, private /24 behind it, MASQUERADE, inbound dropped."""
        require_tool("iptables")
        index = sum(h.kind == "router" for h in self.hosts.values()) + 1
        if index > 254:
            raise UserError("a lab holds at most 254 routers")
        lan_prefix = f"{PRIVATE_OCTET}.{self.block}.{index}"
        host = self._new_host(name, "router", self._public_address(), lan_prefix=lan_prefix)
        self._next_private[name] = 2
        ns = host.namespace
        self._plug(ns, "wan", self.base, "pub", host.address)
        _ip("-n", ns, "link", "add", "lan", "type", "bridge")
        _ip("-n", ns, "addr", "add", f"{host.lan_prefix}.1/24", "dev", "lan")
        _ip("-n", ns, "link", "set", "lan", "up")
        _ns_exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # per namespace: the root's setting is untouched
        _ns_exec(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
        _ns_exec(ns, "iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT")
        _ns_exec(ns, "iptables", "-A", "FORWARD", "-i", "wan", "-j", "DROP")
        # the router itself answers nothing from outside either (no "connection refused": a dial just times out)
        _ns_exec(ns, "iptables", "-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                 "-j", "ACCEPT")
        _ns_exec(ns, "iptables", "-A", "INPUT", "-i", "wan", "-j", "DROP")
        logger.info(f"Lab {self.base}: NAT router {name} at {host.address}, private {host.lan_prefix}.0/24")
        return host

    def add_private_host(self, name: str, router: str, bandwidth_mbit: Optional[float] = None) -> Host:
        """A host on `router`'s private subnet, reaching the internet only through the router's NAT."""
        gateway = self.hosts.get(router)
        if gateway is None or gateway.kind != "router":
            raise UserError(f"no router named {router!r} in this lab: add it first with lab.add_router({router!r})")
        number = self._next_private[router]
        if number > 254:
            raise UserError(f"router {router!r} has no private addresses left (253 hosts at most)")
        self._next_private[router] += 1
        host = self._new_host(name, "private", f"{gateway.lan_prefix}.{number}", router=router,
                              bandwidth_mbit=bandwidth_mbit)
        peer = self._plug(host.namespace, "eth0", gateway.namespace, "lan", host.address)
        _ip("-n", host.namespace, "route", "add", "default", "via", f"{gateway.lan_prefix}.1")
        self._cap(host, peer_ns=gateway.namespace, peer_dev=peer)
        logger.info(f"Lab {self.base}: private host {name} at {host.address} behind {router}"
                    f"{_rate(bandwidth_mbit)}")
        return host

    # -- using ------------------------------------------------------------------------------------------------

    def address(self, host: str) -> str:
        """The host's IP on its segment (for a router: its public address)."""
        return self._host(host).address

    def namespace(self, host: str) -> str:
        return self._host(host).namespace

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0, check: bool = False,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a command inside the host and capture its output (text)."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def popen(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a long-running process inside the host, in its own process group; the lab stops it on exit."""
        kwargs["start_new_session"] = True  # so teardown can kill it with everything it started
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(self.command(host, argv), **kwargs)
        self._processes.append(process)
        return process

    # -- internals --------------------------------------------------------------------------------------------

    def _host(self, name: str) -> Host:
        if name not in self.hosts:
            raise UserError(f"no host named {name!r} in this lab (hosts: {', '.join(self.hosts) or 'none'})")
        return self.hosts[name]

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside the host (for launchers that start processes themselves)."""
        if isinstance(argv, str):
            raise UserError("pass the command as a list of arguments, e.g. ['ping', '-c', '1', address]")
        return ["ip", "netns", "exec", self._host(host).namespace, *argv]

    def _new_host(self, name: str, kind: str, address: str, **fields) -> Host:
        if self.base is None or self._closed:
            raise UserError("the lab is not running: use it as `with NetworkLab() as lab:`")
        if not _HOST_NAME.match(name):
            raise UserError(f"bad host name {name!r}: use 1-12 lowercase letters and digits, starting with a letter")
        if name in self.hosts:
            raise UserError(f"the lab already has a host named {name!r}")
        if fields.get("bandwidth_mbit") is not None and not fields["bandwidth_mbit"] > 0:
            raise UserError(f"bandwidth_mbit must be positive (got {fields['bandwidth_mbit']}); None means uncapped")
        host = Host(name, kind, f"{self.base}-{name}", address, **fields)
        _create_namespace(host.namespace)
        self.hosts[name] = host  # registered before it is wired, so teardown deletes it even if wiring fails
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def _public_address(self) -> str:
        if self._next_public > 254:
            raise UserError("the lab's internet is full (254 public hosts and routers at most)")
        self._next_public += 1
        return f"{PUBLIC_OCTET}.{self.block}.0.{self._next_public}"

    def _plug(self, ns: str, dev: str, bridge_ns: str, bridge: str, address: str) -> str:
        """Connect `dev` in `ns` to `bridge` in `bridge_ns` with a veth; returns the name of the bridge-side end."""
        self._next_link += 1
        peer = f"v{self._next_link}"
        _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", bridge_ns)
        _ip("-n", bridge_ns, "link", "set", peer, "master", bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        return peer

    def _cap(self, host: Host, peer_ns: str, peer_dev: str) -> None:
        """Token-bucket shaping on the egress of both veth ends: the host's upload and its download."""
        if host.bandwidth_mbit is None:
            return
        require_tool("tc")
        rate_bit = int(host.bandwidth_mbit * 1e6)
        burst = max(3200, rate_bit // 8 // 50)  # 20 ms worth of bytes, at least two full frames
        for ns, dev in ((host.namespace, "eth0"), (peer_ns, peer_dev)):
            _ns_exec(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
                     "burst", str(burst), "latency", "100ms")

    def _free_block(self) -> int:
        """A block number X no other lab of this prefix (alive or stale) uses, nor any 10.X/11.X address of the root."""
        used = {ids[1] for ns in _list_namespaces() if (ids := _parse_name(ns, self.prefix))}
        root_addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        used |= {int(x) for x in re.findall(rf"inet (?:{PUBLIC_OCTET}|{PRIVATE_OCTET})\.(\d+)\.", root_addrs)}
        free = [block for block in range(1, 255) if block not in used]
        if not free:
            raise UserError(f"no free address block for another lab: remove old labs with "
                            f"`ip netns list | grep {self.prefix}`")
        return random.choice(free)

    def _stop_processes(self) -> None:
        """SIGTERM every process group started with popen, then SIGKILL what is left after a short grace."""
        for process in self._processes:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in self._processes:
            try:
                process.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(f"lab process {process.pid} ignored SIGTERM: killing it")
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def _rate(bandwidth_mbit: Optional[float]) -> str:
    return "" if bandwidth_mbit is None else f", capped at {bandwidth_mbit:g} Mbit/s"


# SIGTERM raises KeyboardInterrupt while any lab is open (if nobody else handles it), so that `with` tears down.
_open_labs = 0
_saved_sigterm = None


def _hold_sigterm() -> None:
    global _open_labs, _saved_sigterm
    _open_labs += 1
    if _open_labs == 1 and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _saved_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _release_sigterm() -> None:
    global _open_labs, _saved_sigterm
    _open_labs -= 1
    if _open_labs == 0 and _saved_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _saved_sigterm)
        _saved_sigterm = None


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until teardown is finished (an interrupted teardown would leave namespaces behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    saved = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if received:  # deliver it now, to whatever handled it before
            signal.raise_signal(received[0])


@contextmanager
def _allocation_lock() -> Iterator[None]:
    with open(_LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run_checked(argv: list[str]) -> str:
    logger.debug(" ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _ip(*args: str) -> str:
    return _run_checked(["ip", *args])


def _ns_exec(ns: str, *argv: str) -> str:
    return _run_checked(["ip", "netns", "exec", ns, *argv])


def _create_namespace(ns: str) -> None:
    _ip("netns", "add", ns)  # fails if the name exists (the namespace file is created exclusively)


def _delete_namespace(ns: str) -> None:
    try:
        _ip("netns", "delete", ns)
    except RuntimeError as e:
        if ns in _list_namespaces():
            logger.warning(f"could not delete namespace {ns}: {e}")


def _list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _parse_name(ns: str, prefix: str) -> Optional[tuple[int, int]]:
    """(owner pid, block) of a lab namespace name with this prefix, else None."""
    match = re.match(re.escape(prefix) + r"(\d+)-(\d+)(?:-[a-z0-9]+)?$", ns)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _kill_namespace_processes(namespaces: Sequence[str], timeout: float = 5.0) -> None:
    """SIGKILL whatever still runs inside (e.g. a daemon started in a session of its own) and wait until it is gone."""
    deadline = time.monotonic() + timeout
    while pids := [int(pid) for ns in namespaces for pid in _ns_pids(ns)]:
        if time.monotonic() > deadline:
            logger.warning(f"processes {pids} survived SIGKILL in lab namespaces {' '.join(namespaces)}")
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _ns_pids(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
