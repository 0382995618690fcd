"""Name resolution for `<service>.<zone>` while connected, and its exact undo on disconnect.

    inside a named network namespace (`ip netns exec NS wardgate connect`):
        /etc/netns/NS/resolv.conf, which `ip netns exec` mounts over /etc/resolv.conf for every program
        started in NS afterwards: the node's DNS first, then the namespace's previous nameservers
    on a host with systemd-resolved:  `resolvectl dns <iface> <gateways>` + `resolvectl domain <iface> ~<zone>`
        (only the zone goes to the node; resolved forgets both when the interface goes away)
    otherwise: /etc/resolv.conf rewritten in place the same way as the namespace file

The node's DNS answers only its zone and REFUSES the rest, so a stub resolver moves on to the next
nameserver for every other name. A file is restored only if it still holds what `connect` wrote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from wardgate.client.errors import ClientError
from wardgate.client.state import ResolverChange

Mode = Literal["auto", "netns", "resolved", "resolv-conf", "off"]
NETNS_DIR = Path("/var/run/netns")
NETNS_ETC = Path("/etc/netns")
RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")
MARKER = "# written by `wardgate connect`; `wardgate disconnect` puts the previous file back"
MAX_NAMESERVERS = 3  # glibc reads no more


def current_netns(netns_dir: Path = NETNS_DIR, own: Path = Path("/proc/self/ns/net")) -> str | None:
    """The name `ip netns` knows this process's network namespace by, or None (what `ip netns identify` does)."""
    try:
        mine = own.stat()
        entries = sorted(netns_dir.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino):
            return entry.name
    return None


def resolv_conf_text(server: str, previous: str | None) -> str:
    """The file to write: `server` first, then the previous nameservers and the previous other settings."""
    others: list[str] = []
    servers = [server]
    for line in (previous or "").splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            if words[1] not in servers and len(servers) < MAX_NAMESERVERS:
                servers.append(words[1])
        else:
            others.append(line.strip())
    return "\n".join([MARKER, *(f"nameserver {s}" for s in servers), *others]) + "\n"


def _write_in_place(path: Path, text: str) -> None:
    # In place, not by rename: a bind mount of this file (ip netns exec) must keep seeing it.
    with path.open("w") as file:
        file.write(text)


def write_resolv_conf(kind: Literal["netns", "resolv-conf"], path: Path, server: str) -> ResolverChange:
    previous = path.read_text() if path.exists() else None
    if previous is not None and previous.startswith(MARKER):
        raise ClientError(f"{path} was written by another `wardgate connect`: run `wardgate disconnect` there first")
    text = resolv_conf_text(server, previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_in_place(path, text)
    return ResolverChange(kind=kind, path=str(path), previous=previous, written=text)


def _resolvectl(*args: str) -> None:
    result = subprocess.run(["resolvectl", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise ClientError(f"`resolvectl {' '.join(args)}` failed: {result.stderr.strip()}")


def configure(mode: Mode, interface: str, zone: str, servers: list[str]) -> ResolverChange:
    """Point `zone` at `servers` (the node's gateway addresses) the way `mode` says; auto picks as above."""
    netns = current_netns() if mode in ("auto", "netns") else None
    if mode == "netns" and netns is None:
        raise ClientError("--dns netns: this process is not in a named network namespace (`ip netns exec NS ...`)")
    if mode == "off":
        return ResolverChange(kind="off")
    if netns is not None:
        return write_resolv_conf("netns", NETNS_ETC / netns / "resolv.conf", servers[0])
    if mode == "resolved" or (mode == "auto" and shutil.which("resolvectl") and RESOLVED_SOCKET.exists()):
        _resolvectl("dns", interface, *servers)
        _resolvectl("domain", interface, f"~{zone}")
        return ResolverChange(kind="resolved", interface=interface)
    return write_resolv_conf("resolv-conf", RESOLV_CONF, servers[0])


def restore(change: ResolverChange) -> str | None:
    """Undo `change`; returns a warning when something was left alone (the file was changed since)."""
    if change.kind == "off":
        return None
    if change.kind == "resolved":
        assert change.interface is not None
        subprocess.run(["resolvectl", "revert", change.interface], capture_output=True, timeout=10)
        return None
    assert change.path is not None
    path = Path(change.path)
    current = path.read_text() if path.exists() else None
    if current != change.written:
        return f"{path} changed since `wardgate connect` wrote it; left as it is"
    if change.previous is None:
        path.unlink()
        if change.kind == "netns":
            with contextlib.suppress(OSError):
                os.rmdir(path.parent)
    else:
        _write_in_place(path, change.previous)
    return None
