"""Checks interface and network-namespace names before they reach a socket path, a command line or netlink."""

from __future__ import annotations

from pathlib import Path

from wardgate.agent.wg.errors import DeviceUnavailableError

NETNS_DIR = Path("/var/run/netns")
_IFNAMSIZ = 16  # includes the trailing NUL


def check_interface_name(name: str) -> str:
    """Return `name` if Linux accepts it as an interface name (1-15 bytes, no '/', ':' or whitespace)."""
    if not name or len(name.encode()) >= _IFNAMSIZ or name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r}: use 1-15 characters")
    if any(c in "/:" or c.isspace() for c in name):
        raise ValueError(f"invalid interface name {name!r}: no '/', ':' or whitespace")
    return name


def require_netns(netns: str | None) -> None:
    """Raise unless `netns` (a name under /var/run/netns, as `ip netns` uses) exists.

    pyroute2 would silently create a missing namespace (`IPRoute(netns="typo")`), so every entry point
    that takes a namespace checks it here first.
    """
    if netns is None:
        return
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"invalid network namespace name {netns!r}")
    if not (NETNS_DIR / netns).exists():
        raise DeviceUnavailableError(f"network namespace {netns!r} does not exist (create it with `ip netns add`)")
