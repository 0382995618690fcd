"""reconcile.plan: desired + observed -> the device change, as a table (pure; no device, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_network

import pytest

from wardgate.agent.reconcile import Desired, DesiredPeer, desired_peers, next_expiry, plan, wanted
from wardgate.agent.wg import DeviceConfig, DeviceState, IPNetwork, PeerConfig, PeerState, PrivateKey, PublicKey
from wardgate.cluster.resources.wire import PeerEntry, PeerSet, TunnelNetwork

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
NODE = PrivateKey.generate()
A, B, C = (PrivateKey.generate().public_key() for _ in range(3))
IPS = {
    A: (ip_network("100.64.0.2/32"), ip_network("fd77::2/128")),
    B: (ip_network("100.64.0.3/32"), ip_network("fd77::3/128")),
    C: (ip_network("100.64.0.4/32"), ip_network("fd77::4/128")),
}


def want(
    key: PublicKey, expires: datetime = LATER, session: str | None = None, ips: tuple[IPNetwork, ...] | None = None
) -> DesiredPeer:
    return DesiredPeer(key, ips or IPS[key], expires, session or f"s-{str(key)[:4].lower()}")


def have(key: PublicKey, ips: tuple[IPNetwork, ...] | None = None) -> PeerState:
    return PeerState(key, allowed_ips=ips or IPS[key], rx_bytes=10)


def add(key: PublicKey, ips: tuple[IPNetwork, ...] | None = None) -> PeerConfig:
    return PeerConfig(key, replace_allowed_ips=True, allowed_ips=ips or IPS[key])


def remove(key: PublicKey) -> PeerConfig:
    return PeerConfig(key, remove=True)


def ordered(*peers: PeerConfig) -> tuple[PeerConfig, ...]:
    """plan lists removals first, then additions, each by key bytes."""
    removals = sorted((p for p in peers if p.remove), key=lambda p: bytes(p.public_key))
    others = sorted((p for p in peers if not p.remove), key=lambda p: bytes(p.public_key))
    return (*removals, *others)


IN_SYNC = DeviceState(private_key=NODE, listen_port=51820, peers=(have(A), have(B)))

CASES = [
    pytest.param(
        Desired(NODE, 51820, (want(A), want(B))),
        DeviceState(),
        DeviceConfig(private_key=NODE, listen_port=51820, peers=ordered(add(A), add(B))),
        id="fresh device: key, port, every peer",
    ),
    pytest.param(Desired(NODE, 51820, (want(A), want(B))), IN_SYNC, DeviceConfig(), id="in sync: nothing"),
    pytest.param(
        Desired(NODE, 51820, (want(A),)),
        IN_SYNC,
        DeviceConfig(peers=(remove(B),)),
        id="revoked session: its peer goes",
    ),
    pytest.param(
        Desired(NODE, 51820, (want(A), want(B), want(C))),
        IN_SYNC,
        DeviceConfig(peers=(add(C),)),
        id="new session: only its peer is added",
    ),
    pytest.param(
        Desired(NODE, 51820, (want(A), want(B, ips=(ip_network("100.64.0.9/32"),)))),
        IN_SYNC,
        DeviceConfig(peers=(add(B, ips=(ip_network("100.64.0.9/32"),)),)),
        id="allowed IPs differ: rewritten whole",
    ),
    pytest.param(
        Desired(NODE, 51820, (want(A), want(B, expires=NOW))),
        IN_SYNC,
        DeviceConfig(peers=(remove(B),)),
        id="expired at now: removed without the cluster",
    ),
    pytest.param(
        Desired(NODE, 51820, (want(A), want(C, ips=IPS[B]))),
        IN_SYNC,
        DeviceConfig(peers=ordered(remove(B), add(C, ips=IPS[B]))),
        id="client reconnects with a new key: old peer out, new in, same addresses",
    ),
    pytest.param(
        Desired(NODE, 51820, (want(A), want(B), want(B, session="other", ips=IPS[C]))),
        IN_SYNC,
        DeviceConfig(peers=(remove(B),)),
        id="one key claimed by two sessions: neither gets it",
    ),
    pytest.param(
        Desired(NODE, 51820, None),
        DeviceState(peers=(have(A),)),
        DeviceConfig(private_key=NODE, listen_port=51820),
        id="no peer set yet: peers left alone",
    ),
    pytest.param(
        Desired(NODE, 51820, ()),
        IN_SYNC,
        DeviceConfig(peers=ordered(remove(A), remove(B))),
        id="nobody connected: every peer goes",
    ),
    pytest.param(
        Desired(NODE, 51999, (want(A), want(B))),
        IN_SYNC,
        DeviceConfig(listen_port=51999),
        id="port changed: port only",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "expected"), CASES)
def test_plan(desired: Desired, observed: DeviceState, expected: DeviceConfig) -> None:
    assert plan(desired, observed, NOW) == expected


@pytest.mark.parametrize(("desired", "observed", "expected"), CASES)
def test_applying_the_plan_converges(desired: Desired, observed: DeviceState, expected: DeviceConfig) -> None:
    from wardgate.agent.wg.fake import apply

    after = apply(observed, plan(desired, observed, NOW))
    assert plan(desired, after, NOW) == DeviceConfig()


def test_next_expiry_is_the_earliest_wanted_peer() -> None:
    soon = NOW + timedelta(seconds=3)
    desired = Desired(NODE, 51820, (want(A), want(B, expires=soon), want(C, expires=NOW - timedelta(1))))
    assert next_expiry(desired, NOW) == soon
    assert next_expiry(Desired(NODE, 51820, None), NOW) is None
    assert next_expiry(Desired(NODE, 51820, ()), NOW) is None


def test_wanted_drops_expired_and_shared_keys() -> None:
    peers = (want(A), want(B, expires=NOW), want(C), want(C, session="copy"))
    assert set(wanted(peers, NOW)) == {A}


def test_desired_peers_from_the_wire() -> None:
    network = TunnelNetwork(
        ipv4_range="100.64.0.0/10",
        ipv6_prefix="fd77::/64",
        gateway_ipv4="100.64.0.1",
        gateway_ipv6="fd77::1",
        dns_zone="local.example.com",
        http_port=80,
    )
    entry = PeerEntry(
        session="alice-1", user="alice", wg_public_key=A.to_base64(), allowed_ips=["100.64.0.2/32"], expires_at=LATER
    )
    (peer,) = desired_peers(PeerSet(revision=7, network=network, peers=[entry], services=["llm"]))
    assert peer == DesiredPeer(A, (ip_network("100.64.0.2/32"),), LATER, "alice-1")
