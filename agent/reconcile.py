"""The desired state of the node's WireGuard device, and `plan`: desired + observed -> the change (pure).

    PeerSet (cluster) ─▶ desired_from(peer_set) ─▶ Desired
    plan(Desired, DeviceState, now) ─▶ DeviceConfig: wrong key or port set; peers nobody wants removed;
                                        wanted peers added or their allowed IPs rewritten whole

Peers past `expiresAt` are not wanted, whatever the cluster last said, so expiry needs no round trip.
A WireGuard key that two Sessions claim is wanted by neither: its allowed IPs would let one client send
as the other (fail closed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_network

from wardgate.agent.wg import DeviceConfig, DeviceState, IPNetwork, PeerConfig, PrivateKey, PublicKey
from wardgate.cluster.resources.wire import PeerSet


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    """A connected CLIENT Session as a peer."""

    public_key: PublicKey
    allowed_ips: tuple[IPNetwork, ...]
    expires_at: datetime
    session: str


@dataclass(frozen=True, slots=True)
class Desired:
    """What the device should be. `peers` None: no peer set from the cluster yet, so peers are left alone."""

    private_key: PrivateKey
    listen_port: int
    peers: tuple[DesiredPeer, ...] | None = None


def desired_peers(peer_set: PeerSet) -> tuple[DesiredPeer, ...]:
    return tuple(
        DesiredPeer(
            public_key=PublicKey.from_base64(entry.wg_public_key),
            allowed_ips=tuple(ip_network(a, strict=False) for a in entry.allowed_ips),
            expires_at=entry.expires_at,
            session=entry.session,
        )
        for entry in peer_set.peers
    )


def wanted(peers: Iterable[DesiredPeer], now: datetime) -> dict[PublicKey, DesiredPeer]:
    """The peers to have at `now`: unexpired, and each key claimed by exactly one Session."""
    live = [p for p in peers if p.expires_at > now]
    claims = Counter(p.public_key for p in live)
    return {p.public_key: p for p in live if claims[p.public_key] == 1}


def plan(desired: Desired, observed: DeviceState, now: datetime) -> DeviceConfig:
    """The `DeviceConfig` that turns `observed` into `desired` at `now`; `DeviceConfig()` when nothing differs."""
    private_key = desired.private_key if observed.private_key != desired.private_key else None
    listen_port = desired.listen_port if observed.listen_port != desired.listen_port else None
    changes: list[PeerConfig] = []
    if desired.peers is not None:
        want = wanted(desired.peers, now)
        have = {peer.public_key: peer for peer in observed.peers}
        changes += [PeerConfig(key, remove=True) for key in sorted(have, key=bytes) if key not in want]
        for key in sorted(want, key=bytes):
            peer, current = want[key], have.get(key)
            if current is None or set(current.allowed_ips) != set(peer.allowed_ips):
                changes.append(PeerConfig(key, replace_allowed_ips=True, allowed_ips=peer.allowed_ips))
    return DeviceConfig(private_key=private_key, listen_port=listen_port, peers=tuple(changes))


def next_expiry(desired: Desired, now: datetime) -> datetime | None:
    """When the next wanted peer expires (the reconciler wakes then), or None."""
    if desired.peers is None:
        return None
    return min((p.expires_at for p in wanted(desired.peers, now).values()), default=None)
