"""The network lab: reachability through NAT, isolation of concurrent labs, teardown on every path, bandwidth caps.

Traffic is a tiny Python TCP server/client run inside the lab's hosts (no ping needed). Needs root.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collab.errors import UserError
from collab.lab.netlab import NetworkLab, cleanup_stale, require_root, require_tool
from collab.lab.swarm import REPO_ROOT

PREFIX = "dlabt-"  # the tests' own prefix, so they never touch a developer's running lab
PORT = "5000"


def _netns_works() -> bool:
    return shutil.which("ip") is not None and subprocess.run(["ip", "netns", "list"],
                                                             capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not _netns_works(),
                                 reason="the network lab needs root and `ip netns` (CI runs as root)")

SERVER = r"""
import socket, sys, time
s = socket.socket()
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
conn, addr = s.accept()
conn.settimeout(20)
n, start = 0, None
while chunk := conn.recv(65536):
    start = start or time.monotonic()
    n += len(chunk)
print(addr[0], n, time.monotonic() - start if start else 0.0, flush=True)
"""

CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(b"x" * int(sys.argv[4]))
s.close()
"""


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _lab_namespaces(lab: NetworkLab) -> set[str]:
    return {ns for ns in _namespaces() if ns == lab.base or ns.startswith(lab.base + "-")}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _serve(lab: NetworkLab, host: str, accept_timeout: float = 15.0) -> subprocess.Popen:
    server = lab.popen(host, [sys.executable, "-c", SERVER, PORT, str(accept_timeout)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    return server


def _connect(lab: NetworkLab, host: str, address: str, nbytes: int = 2, timeout: float = 5.0):
    return lab.run(host, [sys.executable, "-c", CLIENT, address, PORT, str(timeout), str(nbytes)], timeout=30)


def _received(server: subprocess.Popen) -> tuple[str, int, float]:
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    source, nbytes, seconds = out.split()
    return source, int(nbytes), float(seconds)


def _transfer(lab: NetworkLab, sender: str, receiver: str, nbytes: int) -> tuple[str, int, float]:
    server = _serve(lab, receiver)
    result = _connect(lab, sender, lab.address(receiver), nbytes)
    assert result.returncode == 0, result.stderr
    return _received(server)


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    yield
    if os.geteuid() == 0 and _netns_works():
        assert not {ns for ns in _namespaces() if ns.startswith(PREFIX)}, "a test left lab namespaces behind"


def test_refuses_without_root_or_tools():
    with pytest.raises(UserError, match="needs root"):
        require_root(euid=1000)
    require_root(euid=0)
    with pytest.raises(UserError, match="apt-get install"):
        require_tool("no-such-tool-xyz")
    with pytest.raises(UserError, match="bad lab name prefix"):
        NetworkLab(name_prefix="lab1-")  # a digit would make the owner pid in names ambiguous


@needs_netns
def test_public_hosts_reach_each_other_and_nat_hides_private_hosts():
    with NetworkLab(name_prefix=PREFIX) as lab:
        lab.add_public_host("relay")
        lab.add_public_host("other")
        lab.add_router("home1")
        lab.add_private_host("laptop", router="home1")
        with pytest.raises(UserError, match="no router named"):
            lab.add_private_host("phone", router="relay")
        with pytest.raises(UserError, match="bad host name"):
            lab.add_public_host("Bad_Name")

        assert _transfer(lab, "other", "relay", 2)[:2] == (lab.address("other"), 2)

        # Out through the NAT: the relay sees the router's public address, not the laptop's.
        source, nbytes, _ = _transfer(lab, "laptop", "relay", 2)
        assert nbytes == 2 and source == lab.address("home1") != lab.address("laptop")

        # In through the NAT fails: no route to private addresses on the internet, and the router drops
        # connections from its public side even when sent straight to it. The router itself can connect (the
        # server was listening), so the failures are the NAT's doing.
        server = _serve(lab, "laptop")
        blocked = _connect(lab, "relay", lab.address("laptop"), timeout=2)
        assert blocked.returncode != 0 and "unreachable" in blocked.stderr, blocked.stderr
        lab.run("relay", ["ip", "route", "add", lab.address("laptop"), "via", lab.address("home1")], check=True)
        blocked = _connect(lab, "relay", lab.address("laptop"), timeout=2)
        assert blocked.returncode != 0 and "timed out" in blocked.stderr, blocked.stderr
        assert _connect(lab, "home1", lab.address("laptop")).returncode == 0
        assert _received(server)[1] == 2


@needs_netns
def test_two_labs_at_once_are_disjoint_and_both_work():
    with NetworkLab(name_prefix=PREFIX) as lab1, NetworkLab(name_prefix=PREFIX) as lab2:
        for lab in (lab1, lab2):
            lab.add_public_host("a")
            lab.add_public_host("b")
        names1, names2 = _lab_namespaces(lab1), _lab_namespaces(lab2)
        assert len(names1) == len(names2) == 3 and not names1 & names2
        assert lab1.block != lab2.block and lab1.address("a") != lab2.address("a")
        for lab in (lab1, lab2):
            assert _transfer(lab, "a", "b", 2)[:2] == (lab.address("a"), 2)
        assert _connect(lab1, "a", lab2.address("b"), timeout=2).returncode != 0  # labs cannot see each other


ESCAPE = ("import subprocess as s; "
          "print(s.Popen(['sleep', '300'], start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)")


@needs_netns
def test_teardown_on_exception_kills_processes_and_deletes_namespaces():
    with pytest.raises(RuntimeError, match="boom"):
        with NetworkLab(name_prefix=PREFIX) as lab:
            lab.add_router("home1")
            lab.add_private_host("laptop", router="home1")
            child = lab.popen("laptop", ["sleep", "300"])
            # A daemon that escaped the process group: the namespace sweep must get it too.
            escaped = lab.run("laptop", [sys.executable, "-c", ESCAPE], check=True)
            escaped_pid = int(escaped.stdout)
            assert len(_lab_namespaces(lab)) == 3 and _alive(child.pid) and _alive(escaped_pid)
            raise RuntimeError("boom")
    assert not _lab_namespaces(lab)
    assert child.returncode is not None and not _alive(child.pid)
    assert not _alive(escaped_pid)


LAB_SCRIPT = r"""
import subprocess, sys, time
from collab.lab.netlab import NetworkLab
with NetworkLab(name_prefix=sys.argv[1]) as lab:
    lab.add_public_host("a")
    sleeper = lab.popen("a", ["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(lab.base, sleeper.pid, flush=True)
    time.sleep(60)
"""


def _start_lab_process() -> tuple[subprocess.Popen, str, int]:
    owner = subprocess.Popen([sys.executable, "-c", LAB_SCRIPT, PREFIX], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    line = owner.stdout.readline()
    assert line, owner.stderr.read()
    base, pid = line.split()
    assert {base, base + "-a"} <= _namespaces() and _alive(int(pid))
    return owner, base, int(pid)


@needs_netns
def test_sigterm_tears_down_and_cleanup_stale_removes_a_killed_lab():
    owner, base, sleeper = _start_lab_process()
    owner.send_signal(signal.SIGTERM)
    owner.communicate(timeout=30)
    assert not {base, base + "-a"} & _namespaces() and not _alive(sleeper)

    owner, base, sleeper = _start_lab_process()
    owner.kill()  # SIGKILL: no teardown can run
    owner.communicate(timeout=30)
    assert {base, base + "-a"} <= _namespaces()
    assert set(cleanup_stale(PREFIX)) == {base, base + "-a"}
    assert not {base, base + "-a"} & _namespaces() and not _alive(sleeper)


@needs_netns
def test_bandwidth_cap_slows_both_directions():
    nbytes = 2_000_000  # 2 s at 8 Mbit/s
    with NetworkLab(name_prefix=PREFIX) as lab:
        lab.add_public_host("fast")
        lab.add_public_host("fast2")
        lab.add_public_host("slow", bandwidth_mbit=8)
        assert "tbf" in lab.run("slow", ["tc", "qdisc", "show", "dev", "eth0"], check=True).stdout
        _, received, uncapped_s = _transfer(lab, "fast", "fast2", nbytes)
        assert received == nbytes and uncapped_s < 1.5  # so the bounds below measure the cap, not the machine
        for sender, receiver in (("fast", "slow"), ("slow", "fast")):
            _, received, seconds = _transfer(lab, sender, receiver, nbytes)
            assert received == nbytes and seconds >= 1.5, (sender, receiver, seconds)
