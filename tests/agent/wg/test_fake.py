"""FakeDevice follows WireGuard's `set` rules, so tests written against it hold for the real devices."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError, UapiError
from wardgate.agent.wg.fake import FakeDevice, apply
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey

A, B, C = (PublicKey(bytes([n]) * 32) for n in (1, 2, 3))
N1, N2, N3 = (ip_network(n) for n in ("100.64.0.1/32", "100.64.0.2/32", "fd00::/64"))
PSK = PresharedKey(bytes(range(32)))
ENDPOINT = Endpoint.parse("192.0.2.1:51820")
START = DeviceState(
    listen_port=51820,
    peers=(
        PeerState(A, allowed_ips=(N1,), rx_bytes=100, tx_bytes=200, endpoint=ENDPOINT),
        PeerState(B, allowed_ips=(N2,), persistent_keepalive=25, preshared_key=PSK),
    ),
)

CASES = {
    "empty-config-changes-nothing": (DeviceConfig(), START),
    "device-fields": (
        DeviceConfig(listen_port=1, fwmark=9),
        DeviceState(listen_port=1, fwmark=9, peers=START.peers),
    ),
    "add-peer": (
        DeviceConfig(peers=(PeerConfig(C, allowed_ips=(N3,)),)),
        DeviceState(listen_port=51820, peers=(*START.peers, PeerState(C, allowed_ips=(N3,)))),
    ),
    "remove-peer": (
        DeviceConfig(peers=(PeerConfig(A, remove=True),)),
        DeviceState(listen_port=51820, peers=START.peers[1:]),
    ),
    "remove-missing-peer-is-fine": (DeviceConfig(peers=(PeerConfig(C, remove=True),)), START),
    "update-only-skips-missing": (DeviceConfig(peers=(PeerConfig(C, update_only=True, allowed_ips=(N3,)),)), START),
    "update-only-changes-existing-and-keeps-counters": (
        DeviceConfig(peers=(PeerConfig(A, update_only=True, persistent_keepalive=5),)),
        DeviceState(
            listen_port=51820,
            peers=(
                PeerState(A, allowed_ips=(N1,), rx_bytes=100, tx_bytes=200, endpoint=ENDPOINT, persistent_keepalive=5),
                START.peers[1],
            ),
        ),
    ),
    "allowed-ips-add-up": (
        DeviceConfig(peers=(PeerConfig(A, allowed_ips=(N3, N1)),)),
        DeviceState(
            listen_port=51820,
            peers=(PeerState(A, allowed_ips=(N1, N3), rx_bytes=100, tx_bytes=200, endpoint=ENDPOINT), START.peers[1]),
        ),
    ),
    "replace-allowed-ips": (
        DeviceConfig(peers=(PeerConfig(A, replace_allowed_ips=True, allowed_ips=(N3,)),)),
        DeviceState(
            listen_port=51820,
            peers=(PeerState(A, allowed_ips=(N3,), rx_bytes=100, tx_bytes=200, endpoint=ENDPOINT), START.peers[1]),
        ),
    ),
    "an-allowed-ip-moves-to-the-new-owner": (
        DeviceConfig(peers=(PeerConfig(C, allowed_ips=(N1,)),)),
        DeviceState(
            listen_port=51820,
            peers=(
                PeerState(A, rx_bytes=100, tx_bytes=200, endpoint=ENDPOINT),
                START.peers[1],
                PeerState(C, allowed_ips=(N1,)),
            ),
        ),
    ),
    "replace-peers-starts-from-nothing": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A, allowed_ips=(N2,)),)),
        DeviceState(listen_port=51820, peers=(PeerState(A, allowed_ips=(N2,)),)),
    ),
    "replace-peers-then-update-only-adds-nothing": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A, update_only=True),)),
        DeviceState(listen_port=51820),
    ),
    "remove-then-re-add-resets-the-peer": (
        DeviceConfig(peers=(PeerConfig(A, remove=True), PeerConfig(A))),
        DeviceState(listen_port=51820, peers=(START.peers[1], PeerState(A))),
    ),
}


@pytest.mark.parametrize(("config", "expected"), CASES.values(), ids=CASES.keys())
def test_apply(config: DeviceConfig, expected: DeviceState) -> None:
    assert apply(START, config) == expected


@pytest.mark.parametrize("config", [c for c, _ in CASES.values()], ids=CASES.keys())
def test_apply_is_idempotent(config: DeviceConfig) -> None:
    once = apply(START, config)
    assert apply(once, config) == once


async def test_fake_device_records_applies_fails_and_closes() -> None:
    key = PrivateKey.generate()
    device = FakeDevice()
    config = DeviceConfig(private_key=key, peers=(PeerConfig(A, allowed_ips=(N1,)),))
    await device.configure(config)
    assert device.configs == [config]
    assert (await device.state()).public_key == key.public_key()
    assert (await device.state()).peer(A) == PeerState(A, allowed_ips=(N1,))

    device.fail_with = UapiError(-22, "refused")
    with pytest.raises(UapiError):
        await device.configure(DeviceConfig(listen_port=1))
    assert device.configs == [config] and (await device.state()).listen_port == 0
    await device.configure(DeviceConfig(listen_port=1))  # the failure was one-shot

    await device.close()
    assert device.closed
    with pytest.raises(DeviceUnavailableError):
        await device.state()


async def test_fake_device_starts_from_a_given_state() -> None:
    assert await FakeDevice(START).state() == START
