"""Two namespaces joined by veth, a WireGuard tunnel between them, real packets across it."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from ipaddress import ip_interface, ip_network

import pytest

from tests.netns.lab import Lab, netns_socket, ping
from wardgate.agent.wg import DeviceConfig, Endpoint, PeerConfig, PrivateKey
from wardgate.agent.wg.backend import open_device
from wardgate.agent.wg.device import Device
from wardgate.agent.wg.netlink import Links, kernel_module_loaded

pytestmark = pytest.mark.netns

KINDS = [
    pytest.param("userspace", id="wireguard-go"),
    pytest.param(
        "kernel",
        id="kernel",
        marks=pytest.mark.skipif(
            not kernel_module_loaded(),
            reason="kernel WireGuard module absent (/sys/module/wireguard): the kernel path runs only where it "
            "exists; the wireguard-go run of this test covers this machine",
        ),
    ),
]

TUNNEL = {"a": ("100.64.0.1", "fd00:77::1"), "b": ("100.64.0.2", "fd00:77::2")}


async def _tcp_echo(server_ns: str, client_ns: str, family: int, address: str, payload: bytes) -> bytes:
    listener = netns_socket(server_ns, family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, sock=listener)
    try:
        client = netns_socket(client_ns, family, socket.SOCK_STREAM)
        client.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(client, (address, port)), 5)
        reader, writer = await asyncio.open_connection(sock=client)
        writer.write(payload)
        await writer.drain()
        received = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        writer.close()
        await writer.wait_closed()
        return received
    finally:
        server.close()
        await server.wait_closed()


async def _udp_round_trip(server_ns: str, client_ns: str, address: str, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with (
        netns_socket(server_ns, socket.AF_INET, socket.SOCK_DGRAM) as server,
        netns_socket(client_ns, socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind((address, 0))
        for sock in (server, client):
            sock.setblocking(False)
        await loop.sock_sendto(client, payload, server.getsockname())
        data, source = await asyncio.wait_for(loop.sock_recvfrom(server, 65535), 5)
        await loop.sock_sendto(server, data[::-1], source)
        reply, _ = await asyncio.wait_for(loop.sock_recvfrom(client, 65535), 5)
        return reply[::-1]


async def _bring_up(lab: Lab, kind: str) -> tuple[dict[str, str], dict[str, Device], dict[str, PrivateKey]]:
    namespaces = {"a": lab.namespace(), "b": lab.namespace()}
    underlay = dict(zip("ab", lab.veth(namespaces["a"], namespaces["b"], 7), strict=True))
    names = {side: lab.interface_name() for side in "ab"}
    devices: dict[str, Device] = {}
    for side in "ab":
        devices[side] = await open_device(names[side], namespaces[side], kind=kind)  # type: ignore[arg-type]
    keys = {side: PrivateKey.generate() for side in "ab"}
    for side, other in (("a", "b"), ("b", "a")):
        v4, v6 = TUNNEL[other]
        await devices[side].configure(
            DeviceConfig(
                private_key=keys[side],
                listen_port=51820,
                replace_peers=True,
                peers=(
                    PeerConfig(
                        keys[other].public_key(),
                        endpoint=Endpoint.parse(f"{underlay[other]}:51820"),
                        persistent_keepalive=0,
                        replace_allowed_ips=True,
                        allowed_ips=(ip_network(f"{v4}/32"), ip_network(f"{v6}/128")),
                    ),
                ),
            )
        )
        async with Links(namespaces[side]) as links:
            for address in TUNNEL[side]:
                await links.add_address(names[side], ip_interface(f"{address}/{32 if '.' in address else 128}"))
            await links.set_up(names[side])
            await links.add_route(names[side], ip_network(f"{v4}/32"))
            await links.add_route(names[side], ip_network(f"{v6}/128"))
    return namespaces, devices, keys


@pytest.mark.parametrize("kind", KINDS)
async def test_packets_cross_the_tunnel_until_the_peer_is_removed(lab: Lab, kind: str) -> None:
    namespaces, devices, keys = await _bring_up(lab, kind)
    try:
        before = datetime.now(UTC) - timedelta(seconds=1)
        rtts = await asyncio.to_thread(ping, namespaces["a"], TUNNEL["b"][0], 5)
        print(f"\nping over {kind} WireGuard: min {min(rtts):.3f} / avg {sum(rtts) / len(rtts):.3f} ms")
        payload = b"wardgate" * 4096
        assert await _tcp_echo(namespaces["b"], namespaces["a"], socket.AF_INET, TUNNEL["b"][0], payload) == payload
        assert await _tcp_echo(namespaces["a"], namespaces["b"], socket.AF_INET6, TUNNEL["a"][1], payload) == payload
        assert await _udp_round_trip(namespaces["b"], namespaces["a"], TUNNEL["b"][0], b"datagram") == b"datagram"

        for side, other in (("a", "b"), ("b", "a")):
            state = await devices[side].state()
            assert state.public_key == keys[side].public_key()
            assert state.listen_port == 51820
            (peer,) = state.peers
            assert peer.public_key == keys[other].public_key()
            assert set(peer.allowed_ips) == {
                ip_network(f"{TUNNEL[other][0]}/32"),
                ip_network(f"{TUNNEL[other][1]}/128"),
            }
            assert peer.last_handshake is not None and peer.last_handshake >= before
            assert peer.rx_bytes > len(payload) and peer.tx_bytes > len(payload)
            assert peer.endpoint == Endpoint.parse(f"172.31.7.{2 if side == 'a' else 1}:51820")

        await devices["b"].configure(DeviceConfig(peers=(PeerConfig(keys["a"].public_key(), remove=True),)))
        assert (await devices["b"].state()).peers == ()
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(ping, namespaces["a"], TUNNEL["b"][0], 1, 0.5)
    finally:
        for device in devices.values():
            await device.close()
