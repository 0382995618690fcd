"""Which node the tunnel goes through, and the move to the next one when it stops answering.

    every `interval`: probe = a TCP connection to the gateway's HTTP port through the tunnel (the node's
    tunnel listener; it needs the WireGuard handshake, the node's agent and its cluster process)
    `failures` probes in a row fail ─▶ the next node of the connect answer: its key and endpoint replace the
    only peer (the gateway addresses are the same on every node, so routes and DNS stay) ─▶ on_move(node)

Every node's agent installs every connected client's peer, so the next node knows this client's key already:
the first probe through it makes the handshake. WireGuard's own timers would take minutes to give up on a
dead endpoint, and a peer has one endpoint; this loop is what moves the tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address

from wardgate.agent.wg import Device, DeviceConfig, Endpoint, PeerConfig, PublicKey, WireGuardError
from wardgate.client.errors import ClientError
from wardgate.client.user_api import split_address
from wardgate.cluster.resources.wire import NodePeer

KEEPALIVE = 25


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 1.0
    """Seconds between probes of the current node."""
    timeout: float = 1.0
    """A probe that is not answered within this is a failure."""
    failures: int = 3
    """Failed probes in a row that make the client move to the next node."""


DEFAULT_PROBE = ProbeSettings()


async def resolve_endpoint(node: NodePeer, api_host: str) -> Endpoint:
    """The node's `endpoint` (a name is resolved here: WireGuard takes IP literals only); a node without
    one is dialled at the host the client reached the cluster at, on the node's port."""
    host, port = split_address(node.endpoint) if node.endpoint else (api_host, node.listen_port)
    port = port or node.listen_port
    with contextlib.suppress(ValueError):
        return Endpoint(ip_address(host), port)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ClientError(f"cannot resolve the endpoint {host!r} of node {node.name}: {exc}") from None
    return Endpoint(ip_address(found[0][4][0]), port)


def peer_of(node: NodePeer, endpoint: Endpoint, gateways: Sequence[IPv4Network | IPv6Network]) -> PeerConfig:
    """The client's only peer: `node`, reached at `endpoint`, carrying the gateway addresses."""
    return PeerConfig(
        PublicKey.from_base64(node.wg_public_key),
        endpoint=endpoint,
        persistent_keepalive=KEEPALIVE,
        replace_allowed_ips=True,
        allowed_ips=tuple(gateways),
    )


Probe = Callable[[], Awaitable[bool]]


def tcp_probe(host: str, port: int, limit: float) -> Probe:
    """A probe that is true when a TCP connection to host:port opens within `limit` seconds."""

    async def probe() -> bool:
        try:
            async with asyncio.timeout(limit):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return probe


Moved = Callable[[NodePeer, Endpoint], None]


class Failover:
    """Probes the current node and moves the tunnel to the next node of `nodes` (in order, round) when it
    stops answering. `nodes` may be replaced while running (the cluster's list changes)."""

    def __init__(
        self,
        device: Device,
        nodes: Sequence[NodePeer],
        current: str,
        gateways: Sequence[IPv4Network | IPv6Network],
        probe: Probe,
        api_host: str,
        on_move: Moved,
        settings: ProbeSettings = DEFAULT_PROBE,
    ) -> None:
        self._device = device
        self.nodes = list(nodes)
        self.current = current
        self._gateways = gateways
        self._probe = probe
        self._api_host = api_host
        self._on_move = on_move
        self._settings = settings

    def next_node(self) -> NodePeer | None:
        """The node after the current one in the list (wrapping round); None when there is no other."""
        names = [n.name for n in self.nodes]
        if not names or names == [self.current]:
            return None
        start = names.index(self.current) + 1 if self.current in names else 0
        for offset in range(len(names)):
            candidate = self.nodes[(start + offset) % len(names)]
            if candidate.name != self.current:
                return candidate
        return None

    async def run(self) -> None:
        failed = 0
        while True:
            await asyncio.sleep(self._settings.interval)
            if await self._probe():
                failed = 0
                continue
            failed += 1
            if failed < self._settings.failures:
                continue
            target = self.next_node()
            if target is None:
                continue
            try:
                await self.move(target)
            except (ClientError, WireGuardError) as exc:
                print(f"wardgate: cannot move to node {target.name}: {exc}", file=sys.stderr, flush=True)
                self.current = target.name  # the next round tries the one after it
            failed = 0

    async def move(self, node: NodePeer) -> None:
        endpoint = await resolve_endpoint(node, self._api_host)
        peer = peer_of(node, endpoint, self._gateways)
        await self._device.configure(DeviceConfig(replace_peers=True, peers=(peer,)))
        previous, self.current = self.current, node.name
        print(
            f"wardgate: node {previous} stopped answering; the tunnel moved to node {node.name} at {endpoint}",
            file=sys.stderr,
            flush=True,
        )
        self._on_move(node, endpoint)
