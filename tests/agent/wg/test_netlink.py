"""The kernel path without a kernel: DeviceConfig -> pyroute2 calls -> netlink bytes, and kernel replies -> state.

pyroute2 is imported here only to check our arguments against its own message encoder and decoder.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import AsyncWireGuard  # type: ignore[import-untyped]
from pyroute2.netlink.generic.wireguard import wgmsg  # type: ignore[import-untyped]

from wardgate.agent.wg import names, netlink
from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey
from wardgate.agent.wg.netlink import KernelDevice, Links, SetCall, peer_arguments, set_calls, state_from_messages

PRIVATE = PrivateKey(bytes(range(1, 33)))
A, B, C = (PublicKey(bytes([n]) * 32) for n in (1, 2, 3))
PSK = PresharedKey(bytes([7]) * 32)
ZERO_B64 = base64.b64encode(bytes(32)).decode()
N1, N2 = ip_network("100.64.0.1/32"), ip_network("fd00::/64")

SET_CALLS = {
    "nothing": (DeviceConfig(), (), []),
    "device-fields-in-one-call": (
        DeviceConfig(private_key=PRIVATE, listen_port=51820, fwmark=1),
        (),
        [SetCall(PRIVATE, 51820, 1)],
    ),
    "one-call-per-peer": (
        DeviceConfig(listen_port=0, peers=(PeerConfig(A), PeerConfig(B, remove=True))),
        (A, B),
        [SetCall(listen_port=0), SetCall(peer=PeerConfig(A)), SetCall(peer=PeerConfig(B, remove=True))],
    ),
    "replace-peers-removes-the-unlisted-and-resets-survivors": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A, allowed_ips=(N1,)), PeerConfig(C))),
        (A, B),
        [
            SetCall(peer=PeerConfig(B, remove=True)),
            SetCall(peer=PeerConfig(A, allowed_ips=(N1,)), reset=True),
            SetCall(peer=PeerConfig(C)),
        ],
    ),
    "replace-peers-on-an-empty-device": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A),)),
        (),
        [SetCall(peer=PeerConfig(A))],
    ),
    "replace-peers-update-only-peers-do-not-survive": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A, update_only=True), PeerConfig(C, update_only=True))),
        (A,),
        [SetCall(peer=PeerConfig(A, remove=True))],
    ),
    "replace-peers-second-mention-is-a-plain-update": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A), PeerConfig(A, update_only=True, allowed_ips=(N2,)))),
        (A,),
        [SetCall(peer=PeerConfig(A), reset=True), SetCall(peer=PeerConfig(A, update_only=True, allowed_ips=(N2,)))],
    ),
    "replace-peers-remove-then-add-recreates": (
        DeviceConfig(replace_peers=True, peers=(PeerConfig(A, remove=True), PeerConfig(A))),
        (A,),
        [SetCall(peer=PeerConfig(A, remove=True)), SetCall(peer=PeerConfig(A))],
    ),
    "replace-peers-to-nothing": (
        DeviceConfig(replace_peers=True),
        (A, B),
        [
            SetCall(peer=PeerConfig(A, remove=True)),
            SetCall(peer=PeerConfig(B, remove=True)),
        ],
    ),
}


@pytest.mark.parametrize(("config", "current", "expected"), SET_CALLS.values(), ids=SET_CALLS.keys())
def test_set_calls(config: DeviceConfig, current: tuple[PublicKey, ...], expected: list[SetCall]) -> None:
    assert set_calls(config, current) == expected


PEER_ARGUMENTS = {
    "remove": (PeerConfig(A, remove=True), False, {"public_key": A.to_base64(), "remove": True}),
    "bare": (PeerConfig(A), False, {"public_key": A.to_base64()}),
    "everything": (
        PeerConfig(
            A,
            update_only=True,
            preshared_key=PSK,
            endpoint=Endpoint.parse("[2001:db8::1]:51820"),
            persistent_keepalive=25,
            replace_allowed_ips=True,
            allowed_ips=(N1, N2),
        ),
        False,
        {
            "public_key": A.to_base64(),
            "update_only": True,
            "preshared_key": PSK.to_base64(),
            "endpoint_addr": "2001:db8::1",
            "endpoint_port": 51820,
            "persistent_keepalive": 25,
            "replace_allowed_ips": True,
            "allowed_ips": ["100.64.0.1/32", "fd00::/64"],
        },
    ),
    "reset-fills-defaults": (
        PeerConfig(A, update_only=True, allowed_ips=(N1,)),
        True,
        {
            "public_key": A.to_base64(),
            "preshared_key": ZERO_B64,
            "persistent_keepalive": 0,
            "replace_allowed_ips": True,
            "allowed_ips": ["100.64.0.1/32"],
        },
    ),
    "reset-keeps-given-values": (
        PeerConfig(A, preshared_key=PSK, persistent_keepalive=5),
        True,
        {
            "public_key": A.to_base64(),
            "preshared_key": PSK.to_base64(),
            "persistent_keepalive": 5,
            "replace_allowed_ips": True,
        },
    ),
}


@pytest.mark.parametrize(("peer", "reset", "expected"), PEER_ARGUMENTS.values(), ids=PEER_ARGUMENTS.keys())
def test_peer_arguments(peer: PeerConfig, reset: bool, expected: dict[str, Any]) -> None:
    assert peer_arguments(peer, reset=reset) == expected


def test_set_call_arguments_and_redacted_repr() -> None:
    call = SetCall(PRIVATE, 51820, 7, PeerConfig(A, preshared_key=PSK))
    assert call.arguments() == {
        "private_key": PRIVATE.to_base64(),
        "listen_port": 51820,
        "fwmark": 7,
        "peer": {"public_key": A.to_base64(), "preshared_key": PSK.to_base64()},
    }
    assert PRIVATE.to_base64() not in repr(call) and PSK.to_base64() not in repr(call)


class CapturingWireGuard(AsyncWireGuard):  # type: ignore[misc]
    """pyroute2's own `set` encoder, with the socket write replaced by a capture."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    @property
    def prid(self) -> int:
        return 0x20

    def sendto(self, data: bytes, address: object) -> None:
        self.sent.append(data)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        reply = wgmsg()
        reply["header"]["error"] = None
        yield reply


def _flags(peer: Any) -> int:
    return int(peer.get_attr("WGPEER_A_FLAGS") or 0)


async def test_pyroute2_encodes_our_arguments_into_the_kernels_attributes() -> None:
    config = DeviceConfig(
        private_key=PRIVATE,
        listen_port=51820,
        fwmark=0x1337,
        replace_peers=True,
        peers=(
            PeerConfig(
                A,
                preshared_key=PSK,
                endpoint=Endpoint.parse("192.0.2.1:4"),
                persistent_keepalive=25,
                allowed_ips=(N1, N2),
            ),
            PeerConfig(C, update_only=True),
        ),
    )
    wg = CapturingWireGuard()
    try:
        for call in set_calls(config, current_peers=(A, B)):
            await wg.set("wg0", **call.arguments())
    finally:
        wg.close()
    messages = []
    for data in wg.sent:
        message = wgmsg(data)
        message.decode()
        assert message.get_attr("WGDEVICE_A_IFNAME") == "wg0"
        messages.append(message)
    device, remove_b, reset_a = messages  # C is update_only after a replace: the kernel would skip it too
    assert base64.b64decode(device.get_attr("WGDEVICE_A_PRIVATE_KEY")) == bytes(PRIVATE)
    assert (device.get_attr("WGDEVICE_A_LISTEN_PORT"), device.get_attr("WGDEVICE_A_FWMARK")) == (51820, 0x1337)
    (peer_b,) = remove_b.get_attr("WGDEVICE_A_PEERS")
    assert base64.b64decode(peer_b.get_attr("WGPEER_A_PUBLIC_KEY")) == bytes(B)
    assert _flags(peer_b) == 0x1  # WGPEER_F_REMOVE_ME
    (peer_a,) = reset_a.get_attr("WGDEVICE_A_PEERS")
    assert _flags(peer_a) == 0x2  # WGPEER_F_REPLACE_ALLOWEDIPS
    assert base64.b64decode(peer_a.get_attr("WGPEER_A_PRESHARED_KEY")) == bytes(PSK)
    endpoint = peer_a.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["addr"], endpoint["port"]) == ("192.0.2.1", 4)
    assert peer_a.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert [ip["addr"] for ip in peer_a.get_attr("WGPEER_A_ALLOWEDIPS")] == ["100.64.0.1/32", "fd00::/64"]


async def test_update_only_flag_value() -> None:
    wg = CapturingWireGuard()
    try:
        await wg.set("wg0", **SetCall(peer=PeerConfig(A, update_only=True)).arguments())
    finally:
        wg.close()
    message = wgmsg(wg.sent[0])
    message.decode()
    (peer,) = message.get_attr("WGDEVICE_A_PEERS")
    assert _flags(peer) == 0x4  # WGPEER_F_UPDATE_ONLY


def _allowed(network: str) -> dict[str, Any]:
    net = ip_network(network)
    return {
        "attrs": [
            ("WGALLOWEDIP_A_FAMILY", 2 if net.version == 4 else 10),
            ("WGALLOWEDIP_A_IPADDR", net.network_address.packed),
            ("WGALLOWEDIP_A_CIDR_MASK", net.prefixlen),
        ]
    }


def _kernel_reply(device_attrs: list[tuple[str, Any]], peers: list[list[tuple[str, Any]]]) -> Any:
    """Encode a GET_DEVICE reply the way the kernel sends it, then decode it the way pyroute2 receives it."""
    message = wgmsg()
    message["cmd"] = 0
    message["version"] = 1
    message["attrs"] = [*device_attrs, ("WGDEVICE_A_PEERS", [{"attrs": attrs} for attrs in peers])]
    message.encode()
    received = wgmsg(message.data)
    received.decode()
    return received


def test_state_from_kernel_messages_merges_a_peer_split_across_messages() -> None:
    first = _kernel_reply(
        [
            ("WGDEVICE_A_IFINDEX", 5),
            ("WGDEVICE_A_IFNAME", "wg0"),
            ("WGDEVICE_A_PRIVATE_KEY", PRIVATE.to_base64()),
            ("WGDEVICE_A_PUBLIC_KEY", PRIVATE.public_key().to_base64()),
            ("WGDEVICE_A_LISTEN_PORT", 51820),
            ("WGDEVICE_A_FWMARK", 0),
        ],
        [
            [
                ("WGPEER_A_PUBLIC_KEY", A.to_base64()),
                ("WGPEER_A_PRESHARED_KEY", PSK.to_base64()),
                ("WGPEER_A_ENDPOINT", {"addr": "192.0.2.1", "port": 51820}),
                ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25),
                ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_700_000_000, "tv_nsec": 5_000}),
                ("WGPEER_A_RX_BYTES", 10),
                ("WGPEER_A_TX_BYTES", 20),
                ("WGPEER_A_PROTOCOL_VERSION", 1),
                ("WGPEER_A_ALLOWEDIPS", [_allowed("100.64.0.1/32")]),
            ],
        ],
    )
    second = _kernel_reply(
        [("WGDEVICE_A_IFINDEX", 5), ("WGDEVICE_A_IFNAME", "wg0")],
        [
            [("WGPEER_A_PUBLIC_KEY", A.to_base64()), ("WGPEER_A_ALLOWEDIPS", [_allowed("fd00::/64")])],
            [
                ("WGPEER_A_PUBLIC_KEY", B.to_base64()),
                ("WGPEER_A_PRESHARED_KEY", ZERO_B64),
                ("WGPEER_A_ENDPOINT", {"addr": "::", "port": 0}),
                ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}),
            ],
        ],
    )
    assert state_from_messages([first, second]) == DeviceState(
        private_key=PRIVATE,
        listen_port=51820,
        peers=(
            PeerState(
                A,
                preshared_key=PSK,
                endpoint=Endpoint.parse("192.0.2.1:51820"),
                allowed_ips=(N1, N2),
                last_handshake=datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=UTC),
                rx_bytes=10,
                tx_bytes=20,
                persistent_keepalive=25,
            ),
            PeerState(B),
        ),
    )


def test_state_from_an_empty_device() -> None:
    message = _kernel_reply([("WGDEVICE_A_IFNAME", "wg0"), ("WGDEVICE_A_LISTEN_PORT", 0)], [])
    assert state_from_messages([message]) == DeviceState()


async def test_kernel_device_without_the_module_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(netlink, "MODULE_PATH", tmp_path / "absent")
    device = KernelDevice("wg0")
    with pytest.raises(DeviceUnavailableError, match="no WireGuard module"):
        await device.state()
    with pytest.raises(DeviceUnavailableError, match="no WireGuard module"):
        await device.configure(DeviceConfig(listen_port=1))
    await device.close()


async def test_links_refuse_a_missing_namespace_without_creating_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(names, "NETNS_DIR", tmp_path)
    with pytest.raises(DeviceUnavailableError, match="'typo' does not exist"):
        async with Links("typo"):
            pass
    monkeypatch.setattr(netlink, "MODULE_PATH", tmp_path)  # pretend the module exists: the netns check comes first
    with pytest.raises(DeviceUnavailableError, match="'typo' does not exist"):
        await KernelDevice("wg0", "typo").state()
    assert not (tmp_path / "typo").exists()
