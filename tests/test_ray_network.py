"""The embedded local Ray listens on the loopback interface only.

Its servers (GCS, raylet, workers, agents, the metrics exporter) take requests without
authentication, so on a shared login node or a cluster node with a public interface they must not
be reachable from the network. The test starts a real driver with its own embedded Ray in a
subprocess and reads every listening socket of every process it started from ``/proc`` (what
``ss -ltnp`` shows).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON

pytestmark = pytest.mark.slow

_DRIVER = """
import os, sys
import ray
from gradsweep.executors.ray_executor import ensure_ray
ensure_ray(num_cpus=1)
@ray.remote
def worker_pid():
    return os.getpid()
ray.get(worker_pid.remote())  # a worker process is up, with its own server
print("ready", flush=True)
sys.stdin.read()  # hold Ray until the test has looked
"""


def _children(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp{,6}: each 32-bit word in host (little-endian) order
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_sockets(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """``(pid, protocol, address, port)`` of every listening TCP and unconnected UDP socket of ``pids``."""
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = pid
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            listening = state == "0A" if protocol.startswith("tcp") else int(remote.split(":")[1], 16) == 0
            if listening and inode in owners:
                host, port = local.split(":")
                found.append((owners[inode], protocol, str(_address(host)), int(port, 16)))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def test_the_embedded_ray_listens_on_loopback_only(cli_env: dict):
    driver = subprocess.Popen([PYTHON, "-c", _DRIVER], env=cli_env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready", driver.stderr.read() if driver.poll() is not None else ""
        sockets = listening_sockets(_children(driver.pid))
    finally:
        driver.stdin.close()
        driver.wait(timeout=120)
    # the GCS, the raylet, the driver's and the worker's servers at least: the check is not vacuous
    assert len({pid for pid, *_ in sockets}) >= 4, sockets
    exposed = [s for s in sockets if not _loopback(s[2])]
    assert exposed == [], f"listening beyond 127.0.0.1: {exposed}"
