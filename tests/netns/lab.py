"""A throwaway network lab for root tests: uniquely named namespaces joined by veth pairs, always torn down.

Names carry the test process id and a counter, so parallel runs never collide (wireguard-go's sockets in
/var/run/wireguard are shared by every namespace). Sockets can be opened inside a namespace in-process
(`netns_socket`), so tests drive UDP, TCP and ICMP with ordinary asyncio code.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from wardgate.agent.wg.uapi import SOCKET_DIR
from wardgate.agent.wg.wireguard_go import WireGuardGo

CLONE_NEWNET = 0x4000_0000
NETNS_DIR = Path("/var/run/netns")
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name unique to this process and call, at most 15 characters (Linux's interface name limit)."""
    name = f"{prefix}{os.getpid() % 10**7}x{next(_counter)}"
    assert len(name) <= 15, name
    return name


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _enter_and_open(netns: str, family: int, kind: int, proto: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({netns}): {os.strerror(error)}")
        return socket.socket(family, kind, proto)
    finally:
        os.close(target)


def netns_socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in `netns`: made on a throwaway thread that enters the namespace (setns is per thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_enter_and_open, netns, family, kind, proto).result()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(netns: str, address: str, count: int = 5, timeout: float = 2.0) -> list[float]:
    """Send ICMP echo requests from `netns` (raw socket; no ping binary needed); return each RTT in ms."""
    rtts = []
    with netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        ident = os.getpid() & 0xFFFF
        for sequence in range(1, count + 1):
            payload = os.urandom(32)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, sequence) + payload
            start = time.perf_counter()
            sock.sendto(packet, (address, 0))
            while True:
                reply = sock.recv(2048)
                icmp = reply[(reply[0] & 0x0F) * 4 :]
                kind, _, _, reply_ident, reply_sequence = struct.unpack("!BBHHH", icmp[:8])
                if kind == 0 and reply_ident == ident and reply_sequence == sequence and icmp[8:] == payload:
                    break
            rtts.append((time.perf_counter() - start) * 1000)
    return rtts


class Lab:
    """Namespaces, veth pairs and wireguard-go processes created for one test; `cleanup()` removes them all."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.processes: list[WireGuardGo] = []
        self.interfaces: list[str] = []

    def namespace(self) -> str:
        name = unique("wgtns")
        self.namespaces.append(name)  # before creating: a half-made namespace is cleaned up too
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def interface_name(self) -> str:
        name = unique("wgt")
        self.interfaces.append(name)
        return name

    def veth(self, left: str, right: str, subnet: int) -> tuple[str, str]:
        """Join two namespaces with a veth pair addressed 172.31.<subnet>.1/24 (left) and .2 (right)."""
        left_if, right_if = unique("vel"), unique("ver")
        ip("link", "add", left_if, "netns", left, "type", "veth", "peer", "name", right_if, "netns", right)
        for netns, iface, host in ((left, left_if, 1), (right, right_if, 2)):
            ip("-n", netns, "addr", "add", f"172.31.{subnet}.{host}/24", "dev", iface)
            ip("-n", netns, "link", "set", iface, "up")
        return f"172.31.{subnet}.1", f"172.31.{subnet}.2"

    async def wireguard_go(self, iface: str, netns: str) -> WireGuardGo:
        process = await WireGuardGo.start(iface, netns=netns)
        self.processes.append(process)
        return process

    async def cleanup(self) -> None:
        """Stop our processes, kill anything left in our namespaces, delete them, remove our stale sockets."""
        errors = []
        for process in self.processes:
            try:
                await process.stop()
            except Exception as e:
                errors.append(f"stopping wireguard-go {process.pid}: {e}")
        for netns in self.namespaces:
            if not (NETNS_DIR / netns).exists():
                continue
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only processes inside a namespace this lab created
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            result = subprocess.run(["ip", "netns", "del", netns], capture_output=True, text=True)
            if result.returncode != 0:
                errors.append(f"deleting netns {netns}: {result.stderr.strip()}")
        for iface in self.interfaces:
            (SOCKET_DIR / f"{iface}.sock").unlink(missing_ok=True)
        if errors:
            raise AssertionError("lab cleanup failed: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Anything of this lab still on the host (empty after a good cleanup)."""
        found = [f"netns {n}" for n in self.namespaces if (NETNS_DIR / n).exists()]
        found += [f"socket {i}" for i in self.interfaces if (SOCKET_DIR / f"{i}.sock").exists()]
        found += [f"wireguard-go {p.pid}" for p in self.processes if p.returncode is None]
        return found


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t:` leaves the elapsed seconds in t[0]."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
