"""The `Device` seam: what the agent and the client ask of a WireGuard interface, and the values they exchange.

A `DeviceConfig` is a delta, read the way WireGuard's UAPI `set` reads it: fields left as None keep their
value, peers not listed keep theirs (unless `replace_peers`). A `DeviceState` is a full snapshot (`get`).
Implementations: `netlink.KernelDevice`, `uapi.UapiDevice`, `fake.FakeDevice`; `backend.open_device` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Protocol, TypeAlias

from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey

IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPAddress: TypeAlias = IPv4Address | IPv6Address

_UINT16 = 0xFFFF
_UINT32 = 0xFFFF_FFFF


def _check_range(name: str, value: int | None, top: int) -> None:
    if value is not None and not 0 <= value <= top:
        raise ValueError(f"{name} must be in 0..{top}, got {value}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A peer's UDP address: an IP literal and a port (WireGuard resolves no hostnames)."""

    host: IPAddress
    port: int

    def __post_init__(self) -> None:
        _check_range("endpoint port", self.port, _UINT16)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `192.0.2.1:51820` or `[2001:db8::1]:51820`."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"endpoint {text!r}: expected <ip>:<port>")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"endpoint {text!r}: put an IPv6 address in brackets")
        try:
            address = ip_address(host)
        except ValueError as e:
            raise ValueError(f"endpoint {text!r}: {host!r} is not an IP address") from e
        return cls(address, int(port))

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One peer's part of a `DeviceConfig`; unset fields leave the peer's current values alone.

    `remove` deletes the peer (no other field may be set). `update_only` changes the peer only if it
    already exists. `allowed_ips` are added to the peer's set, or replace it when `replace_allowed_ips`;
    an allowed IP another peer holds moves to this one. `persistent_keepalive` 0 turns keepalives off.
    """

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        _check_range("persistent_keepalive", self.persistent_keepalive, _UINT16)
        if self.remove and (
            self.update_only
            or self.preshared_key is not None
            or self.endpoint is not None
            or self.persistent_keepalive is not None
            or self.replace_allowed_ips
            or self.allowed_ips
        ):
            raise ValueError(f"peer {self.public_key}: remove=True takes no other fields")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A change to a device, applied in order: device fields, then `replace_peers`, then each peer.

    Applying the same config twice leaves the device as applying it once did (`Device.configure` is
    idempotent), so a writer may retry after an error.
    """

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerConfig, ...] = ()

    def __post_init__(self) -> None:
        _check_range("listen_port", self.listen_port, _UINT16)
        _check_range("fwmark", self.fwmark, _UINT32)


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as the device reports it; `last_handshake` is None until the first handshake (UTC)."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    last_handshake: datetime | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A full snapshot of a device. `listen_port` is the bound port (the device picks one when set to 0)."""

    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerState, ...] = ()

    @property
    def public_key(self) -> PublicKey | None:
        return self.private_key.public_key() if self.private_key is not None else None

    def peer(self, public_key: PublicKey) -> PeerState | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


class Device(Protocol):
    """One WireGuard interface, seen through its configuration protocol (netlink, UAPI, or a fake).

    Callers serialise writes (one writer per device, habit 8). Methods raise `errors.WireGuardError`
    subclasses: `DeviceUnavailableError` when the interface or its process is gone, `UapiError` /
    `KernelError` when the device refuses a change.
    """

    async def state(self) -> DeviceState:
        """Read the whole device: keys, port, and every peer with its counters."""
        ...

    async def configure(self, config: DeviceConfig) -> None:
        """Apply `config` as a delta (see `DeviceConfig`); idempotent. Not atomic: on error, earlier parts
        may stay applied, so read `state()` back when it matters."""
        ...

    async def close(self) -> None:
        """Release the device's connections, and whatever `open_device` created for it."""
        ...
