"""Failover without sockets: a scripted probe, a FakeDevice, and the moves it makes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import ip_network

import pytest

from wardgate.agent.wg import DeviceConfig, Endpoint, PrivateKey, PublicKey
from wardgate.agent.wg.fake import FakeDevice
from wardgate.client.failover import Failover, ProbeSettings, resolve_endpoint, tcp_probe
from wardgate.cluster.resources.wire import NodePeer

GATEWAYS = (ip_network("100.64.0.1/32"), ip_network("fd77:6172:6467::1/128"))
FAST = ProbeSettings(interval=0.001, timeout=0.01, failures=3)


def _node(name: str, endpoint: str | None) -> NodePeer:
    key = PrivateKey.generate().public_key().to_base64()
    return NodePeer(name=name, wg_public_key=key, listen_port=51820, endpoint=endpoint)


class Script:
    """A probe answering from a list of results (True: the node answered), then `rest` forever."""

    def __init__(self, results: list[bool], rest: bool = True) -> None:
        self.results = results
        self.rest = rest
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.results.pop(0) if self.results else self.rest


async def _run_until(failover: Failover, condition: Callable[[], bool], within: float = 2.0) -> None:
    """Run the failover until `condition` holds (fails after `within` seconds)."""
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(failover.run())
        for _ in range(int(within / 0.001)):
            if condition():
                break
            await asyncio.sleep(0.001)
        task.cancel()
    assert condition(), "not within the time"


async def test_three_failed_probes_move_the_peer_to_the_next_node() -> None:
    a, b = _node("node-a", "192.0.2.1:51820"), _node("node-b", "192.0.2.2:51821")
    device = FakeDevice()
    moves: list[tuple[str, Endpoint]] = []
    probe = Script([True, False, False, True, False, False, False])
    failover = Failover(
        device, [a, b], "node-a", GATEWAYS, probe, "192.0.2.1", lambda n, e: moves.append((n.name, e)), FAST
    )
    await _run_until(failover, lambda: bool(moves))
    # A success in between resets the count: only the three failures in a row moved it.
    assert probe.calls == 7
    assert moves == [("node-b", Endpoint.parse("192.0.2.2:51821"))]
    assert failover.current == "node-b"
    (config,) = device.configs
    assert isinstance(config, DeviceConfig) and config.replace_peers and config.private_key is None
    (peer,) = config.peers
    assert peer.public_key == PublicKey.from_base64(b.wg_public_key)
    assert peer.endpoint == Endpoint.parse("192.0.2.2:51821")
    assert peer.replace_allowed_ips and set(peer.allowed_ips) == set(GATEWAYS)


async def test_moves_go_round_the_list_and_skip_a_node_that_cannot_be_reached() -> None:
    nodes = [_node("node-a", "192.0.2.1:51820"), _node("node-b", "no-such-host.invalid:51820"), _node("node-c", None)]
    device = FakeDevice()
    moved: list[str] = []
    failover = Failover(
        device,
        nodes,
        "node-a",
        GATEWAYS,
        Script([], rest=False),
        "192.0.2.9",
        lambda n, e: moved.append(f"{n.name} {e}"),
        FAST,
    )
    await _run_until(failover, lambda: len(moved) >= 2)
    # node-b's name does not resolve: it is passed over; node-c has no endpoint: the API host, its port.
    assert moved[:2] == ["node-c 192.0.2.9:51820", "node-a 192.0.2.1:51820"]


async def test_a_lone_node_is_kept_and_the_list_can_grow() -> None:
    a, b = _node("node-a", "192.0.2.1:51820"), _node("node-b", "192.0.2.2:51820")
    failover = Failover(
        FakeDevice(), [a], "node-a", GATEWAYS, Script([], rest=False), "192.0.2.1", lambda n, e: None, FAST
    )
    assert failover.next_node() is None
    failover.nodes = [b, a]  # the session's answer lists a node that joined
    assert failover.next_node() == b


async def test_resolve_endpoint_and_tcp_probe_on_loopback() -> None:
    assert await resolve_endpoint(_node("n", "[2001:db8::1]:5000"), "x") == Endpoint.parse("[2001:db8::1]:5000")
    assert await resolve_endpoint(_node("n", "localhost:5000"), "x") in (
        Endpoint.parse("127.0.0.1:5000"),
        Endpoint.parse("[::1]:5000"),
    )
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await tcp_probe("127.0.0.1", port, 1.0)()
    server.close()
    await server.wait_closed()
    assert not await tcp_probe("127.0.0.1", port, 1.0)()


@pytest.mark.parametrize("current", ["node-a", "gone"])
def test_next_node_after_an_unknown_current_is_the_first(current: str) -> None:
    a, b = _node("node-a", None), _node("node-b", None)
    failover = Failover(FakeDevice(), [a, b], current, GATEWAYS, Script([]), "h", lambda n, e: None, FAST)
    assert failover.next_node() == (b if current == "node-a" else a)
