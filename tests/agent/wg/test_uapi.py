"""UAPI: the pure encoder and parser as tables, and UapiDevice against a scripted unix-socket server."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path

import pytest
import pytest_asyncio

from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError, UapiError
from wardgate.agent.wg.fake import apply
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey
from wardgate.agent.wg.uapi import UapiDevice, check_set_reply, encode_set, parse_get

PRIVATE = PrivateKey(bytes(range(1, 33)))
PEER_A = PublicKey(bytes([0xAA]) * 32)
PEER_B = PublicKey(bytes([0xBB]) * 32)
PSK = PresharedKey(bytes([0x55]) * 32)
HEX_A, HEX_B = "aa" * 32, "bb" * 32
NETS = [ip_network(n) for n in ("10.0.0.0/8", "fd00::/64", "100.64.0.2/32")]


def format_get(state: DeviceState, *, handshake: tuple[int, int] = (0, 0)) -> str:
    """A `get` reply as wireguard-go writes it."""
    lines = []
    if state.private_key is not None:
        lines.append(f"private_key={state.private_key.to_hex()}")
    lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.to_hex()}")
        psk = peer.preshared_key.to_hex() if peer.preshared_key else "0" * 64
        lines.append(f"preshared_key={psk}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines += [
            f"last_handshake_time_sec={handshake[0]}",
            f"last_handshake_time_nsec={handshake[1]}",
            f"tx_bytes={peer.tx_bytes}",
            f"rx_bytes={peer.rx_bytes}",
            f"persistent_keepalive_interval={peer.persistent_keepalive}",
        ]
        lines += [f"allowed_ip={n}" for n in peer.allowed_ips]
    return "\n".join([*lines, "errno=0"]) + "\n\n"


# ---------------------------------------------------------------- encode_set


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(DeviceConfig(), "set=1\n\n", id="empty"),
        pytest.param(
            DeviceConfig(private_key=PRIVATE, listen_port=51820, fwmark=0x1337, replace_peers=True),
            f"set=1\nprivate_key={PRIVATE.to_hex()}\nlisten_port=51820\nfwmark=4919\nreplace_peers=true\n\n",
            id="device-fields",
        ),
        pytest.param(
            DeviceConfig(listen_port=0, fwmark=0),
            "set=1\nlisten_port=0\nfwmark=0\n\n",
            id="zero-values-are-sent",
        ),
        pytest.param(
            DeviceConfig(
                peers=(
                    PeerConfig(
                        PEER_A,
                        preshared_key=PSK,
                        endpoint=Endpoint.parse("192.0.2.1:51820"),
                        persistent_keepalive=25,
                        replace_allowed_ips=True,
                        allowed_ips=tuple(NETS),
                    ),
                )
            ),
            f"set=1\npublic_key={HEX_A}\npreshared_key={'55' * 32}\nendpoint=192.0.2.1:51820\n"
            "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
            "allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\nallowed_ip=100.64.0.2/32\n\n",
            id="peer-all-fields",
        ),
        pytest.param(
            DeviceConfig(peers=(PeerConfig(PEER_A, remove=True), PeerConfig(PEER_B, update_only=True))),
            f"set=1\npublic_key={HEX_A}\nremove=true\npublic_key={HEX_B}\nupdate_only=true\n\n",
            id="remove-and-update-only",
        ),
        pytest.param(
            DeviceConfig(
                peers=(PeerConfig(PEER_A, endpoint=Endpoint.parse("[2001:db8::1]:7"), persistent_keepalive=0),)
            ),
            f"set=1\npublic_key={HEX_A}\nendpoint=[2001:db8::1]:7\npersistent_keepalive_interval=0\n\n",
            id="ipv6-endpoint-keepalive-off",
        ),
    ],
)
def test_encode_set(config: DeviceConfig, expected: str) -> None:
    assert encode_set(config) == expected


def test_encode_set_has_one_blank_line_only_at_the_end() -> None:
    text = encode_set(DeviceConfig(peers=tuple(PeerConfig(PEER_A, allowed_ips=(n,)) for n in NETS)))
    assert text.endswith("\n\n") and "\n\n" not in text[:-2]


# ---------------------------------------------------------------- parse_get


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param("errno=0\n\n", DeviceState(), id="empty-device"),
        pytest.param("listen_port=51820\nerrno=0\n\n", DeviceState(listen_port=51820), id="port-only"),
        pytest.param(
            f"private_key={'00' * 32}\nlisten_port=1\nfwmark=7\nerrno=0\n\n",
            DeviceState(listen_port=1, fwmark=7),
            id="zero-private-key-is-none",
        ),
        pytest.param(
            f"private_key={PRIVATE.to_hex()}\nlisten_port=51820\npublic_key={HEX_A}\npreshared_key={'55' * 32}\n"
            "protocol_version=1\nendpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\n"
            "last_handshake_time_nsec=123456789\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n"
            f"allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\npublic_key={HEX_B}\npreshared_key={'00' * 32}\n"
            "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n",
            DeviceState(
                private_key=PRIVATE,
                listen_port=51820,
                peers=(
                    PeerState(
                        PEER_A,
                        preshared_key=PSK,
                        endpoint=Endpoint.parse("[2001:db8::1]:51820"),
                        allowed_ips=tuple(NETS[:2]),
                        last_handshake=datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
                        rx_bytes=20,
                        tx_bytes=10,
                        persistent_keepalive=25,
                    ),
                    PeerState(PEER_B),
                ),
            ),
            id="two-peers-as-wireguard-go-writes",
        ),
        pytest.param(
            f"listen_port=1\nfuture_device_key=x\npublic_key={HEX_A}\nfuture_peer_key=y\nerrno=0\n\n",
            DeviceState(listen_port=1, peers=(PeerState(PEER_A),)),
            id="unknown-keys-ignored",
        ),
        pytest.param(
            f"public_key={HEX_A}\nallowed_ip=10.1.2.3/8\nerrno=0\n\n",
            DeviceState(peers=(PeerState(PEER_A, allowed_ips=(ip_network("10.0.0.0/8"),)),)),
            id="allowed-ip-host-bits-masked",
        ),
    ],
)
def test_parse_get(reply: str, expected: DeviceState) -> None:
    assert parse_get(reply) == expected


MALFORMED = {
    "empty": "",
    "no-blank-line": "errno=0\n",
    "no-errno": "listen_port=1\n\n",
    "errno-not-int": "errno=abc\n\n",
    "errno-empty": "errno=\n\n",
    "errno-float": "errno=0.0\n\n",
    "data-after-errno": "errno=0\nlisten_port=1\n\n",
    "trailing-garbage": "errno=0\n\nlisten_port=1",
    "blank-line-inside": "listen_port=1\n\nerrno=0\n\n",
    "no-equals": "listen_port\nerrno=0\n\n",
    "empty-key": "=5\nerrno=0\n\n",
    "port-not-int": "listen_port=abc\nerrno=0\n\n",
    "port-negative": "listen_port=-1\nerrno=0\n\n",
    "port-too-big": "listen_port=65536\nerrno=0\n\n",
    "port-unicode-digit": "listen_port=\u00b2\nerrno=0\n\n",
    "fwmark-too-big": "fwmark=4294967296\nerrno=0\n\n",
    "private-key-not-hex": f"private_key={'zz' * 32}\nerrno=0\n\n",
    "private-key-short": f"private_key={'00' * 31}\nerrno=0\n\n",
    "public-key-base64": f"public_key={PEER_A.to_base64()}\nerrno=0\n\n",
    "peer-field-first": "allowed_ip=10.0.0.0/8\nerrno=0\n\n",
    "device-field-after-peer": f"public_key={HEX_A}\nlisten_port=1\nerrno=0\n\n",
    "hostname-endpoint": f"public_key={HEX_A}\nendpoint=example.com:1\nerrno=0\n\n",
    "bad-allowed-ip": f"public_key={HEX_A}\nallowed_ip=300.0.0.0/8\nerrno=0\n\n",
    "bytes-float": f"public_key={HEX_A}\nrx_bytes=1.5\nerrno=0\n\n",
    "bytes-over-u64": f"public_key={HEX_A}\ntx_bytes={2**64}\nerrno=0\n\n",
    "keepalive-too-big": f"public_key={HEX_A}\npersistent_keepalive_interval=70000\nerrno=0\n\n",
    "nsec-too-big": f"public_key={HEX_A}\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=1000000000\nerrno=0\n\n",
    "sec-out-of-range": f"public_key={HEX_A}\nlast_handshake_time_sec=99999999999999999\nerrno=0\n\n",
    "bad-psk": f"public_key={HEX_A}\npreshared_key=xyz\nerrno=0\n\n",
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
def test_parse_get_refuses_malformed_replies(reply: str) -> None:
    with pytest.raises(UapiError) as refused:
        parse_get(reply)
    assert refused.value.errno == errno.EPROTO
    assert "malformed UAPI reply" in str(refused.value)


@pytest.mark.parametrize("code", [-22, -98, -5, 22, 1, -55])
def test_nonzero_errno_raises_with_the_devices_value(code: int) -> None:
    for check in (parse_get, check_set_reply):
        with pytest.raises(UapiError) as refused:
            check(f"errno={code}\n\n")
        assert refused.value.errno == code
        assert f"errno {code}" in str(refused.value)


@pytest.mark.parametrize("reply", ["", "errno=0\n", "listen_port=1\nerrno=0\n\n", "errno=x\n\n"])
def test_set_reply_must_be_exactly_errno(reply: str) -> None:
    with pytest.raises(UapiError, match="malformed"):
        check_set_reply(reply)


def test_set_reply_zero_is_success() -> None:
    check_set_reply("errno=0\n\n")


def _many_peers(count: int) -> DeviceConfig:
    return DeviceConfig(
        private_key=PRIVATE,
        listen_port=51820,
        replace_peers=True,
        peers=tuple(
            PeerConfig(
                PublicKey(i.to_bytes(32, "big")),
                preshared_key=PSK if i % 2 else None,
                endpoint=Endpoint.parse(f"192.0.2.{i % 250 + 1}:{1000 + i}"),
                persistent_keepalive=i % 60,
                allowed_ips=(ip_network(f"100.64.{i // 256}.{i % 256}/32"), ip_network(f"fd00::{i:x}/128")),
            )
            for i in range(count)
        ),
    )


def test_a_thousand_peers_round_trip() -> None:
    config = _many_peers(1000)
    expected = apply(DeviceState(), config)
    started = time.perf_counter()
    request = encode_set(config)
    encoded = time.perf_counter() - started
    reply = format_get(expected)
    started = time.perf_counter()
    state = parse_get(reply)
    parsed = time.perf_counter() - started
    print(f"\n1,000 peers: encode_set {encoded * 1000:.1f} ms ({len(request)} B), parse_get {parsed * 1000:.1f} ms")
    assert state == expected
    assert request.count("public_key=") == 1000 and request.count("allowed_ip=") == 2000
    assert len(reply) > 64 * 1024  # larger than asyncio's default stream limit


# ---------------------------------------------------------------- UapiDevice against a scripted server

Handler = Callable[[bytes], Awaitable[bytes | None]]


class ScriptedServer:
    """A unix-socket server that records each connection's request and answers with `handler`."""

    def __init__(self, directory: Path, iface: str) -> None:
        self.path = directory / f"{iface}.sock"
        self.requests: list[bytes] = []
        self.active = self.most_active = 0
        self.handler: Handler = self.ok
        self._server: asyncio.Server | None = None

    @staticmethod
    async def ok(request: bytes) -> bytes | None:
        return b"errno=0\n\n"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            request = await reader.readuntil(b"\n\n")
            self.requests.append(request)
            reply = await self.handler(request)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.active -= 1
            writer.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="wg", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest_asyncio.fixture
async def server(short_dir: Path) -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer(short_dir, "wgtest0")
    await scripted.start()
    try:
        yield scripted
    finally:
        await scripted.stop()


def device_for(server: ScriptedServer, timeout: float = 5.0) -> UapiDevice:
    return UapiDevice("wgtest0", socket_dir=server.path.parent, timeout=timeout)


async def test_state_sends_get_and_parses_the_reply(server: ScriptedServer) -> None:
    expected = apply(DeviceState(), _many_peers(3))

    async def reply(request: bytes) -> bytes:
        return format_get(expected).encode()

    server.handler = reply
    assert await device_for(server).state() == expected
    assert server.requests == [b"get=1\n\n"]


async def test_configure_sends_exactly_one_set_per_connection(server: ScriptedServer) -> None:
    device = device_for(server)
    configs = [DeviceConfig(listen_port=p) for p in (1, 2, 3)]
    for config in configs:
        await device.configure(config)
    assert server.requests == [encode_set(c).encode() for c in configs]


async def test_a_refused_set_raises_the_devices_errno(server: ScriptedServer) -> None:
    async def refuse(request: bytes) -> bytes:
        return b"errno=-22\n\n"

    server.handler = refuse
    with pytest.raises(UapiError) as refused:
        await device_for(server).configure(DeviceConfig(listen_port=1))
    assert refused.value.errno == -22


async def test_only_one_operation_is_in_flight(server: ScriptedServer) -> None:
    async def slow(request: bytes) -> bytes:
        await asyncio.sleep(0.01)
        return b"errno=0\n\n" if request.startswith(b"set") else b"listen_port=1\nerrno=0\n\n"

    server.handler = slow
    device = device_for(server)
    await asyncio.gather(*(device.configure(DeviceConfig(listen_port=i)) for i in range(10)), device.state())
    assert server.most_active == 1
    assert server.requests[:10] == [encode_set(DeviceConfig(listen_port=i)).encode() for i in range(10)]


async def test_a_reply_far_above_64_kib_is_read(server: ScriptedServer) -> None:
    expected = apply(DeviceState(), _many_peers(3000))

    async def reply(request: bytes) -> bytes:
        return format_get(expected).encode()

    server.handler = reply
    assert len(format_get(expected)) > 512 * 1024
    assert await device_for(server).state() == expected


async def test_no_answer_is_unavailable(server: ScriptedServer) -> None:
    async def hang_up(request: bytes) -> None:
        return None

    server.handler = hang_up
    with pytest.raises(DeviceUnavailableError, match="closed the connection without answering the get"):
        await device_for(server).state()


async def test_a_truncated_reply_is_malformed(server: ScriptedServer) -> None:
    async def truncated(request: bytes) -> bytes:
        return b"listen_port=1\nerr"

    server.handler = truncated
    with pytest.raises(UapiError, match="connection closed after 17 bytes"):
        await device_for(server).state()


async def test_a_silent_device_times_out(server: ScriptedServer) -> None:
    async def silent(request: bytes) -> bytes:
        await asyncio.sleep(0.5)
        return b"errno=0\n\n"

    server.handler = silent
    with pytest.raises(DeviceUnavailableError, match=r"did not answer a set within 0\.1 s"):
        await device_for(server, timeout=0.1).configure(DeviceConfig())


async def test_a_missing_socket_says_wireguard_go_is_not_running(short_dir: Path) -> None:
    device = UapiDevice("wgmissing", socket_dir=short_dir)
    with pytest.raises(DeviceUnavailableError, match="wireguard-go is not running for wgmissing"):
        await device.state()


async def test_a_stale_socket_says_wireguard_go_is_not_running(short_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(short_dir / "wgstale.sock"))  # bound, never listening: like a crashed wireguard-go
        with pytest.raises(DeviceUnavailableError, match="wireguard-go is not running for wgstale"):
            await UapiDevice("wgstale", socket_dir=short_dir).configure(DeviceConfig())


async def test_a_closed_device_refuses_operations(server: ScriptedServer) -> None:
    device = device_for(server)
    await device.close()
    with pytest.raises(DeviceUnavailableError, match="closed"):
        await device.state()
    assert server.requests == []
