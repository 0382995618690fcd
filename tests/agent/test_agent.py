"""The agent's reconcile loop against a FakeDevice: snapshots become peers, expiry removes them on time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wardgate.agent.applier import Applier
from wardgate.agent.config import AgentConfig
from wardgate.agent.control import ClusterConnection
from wardgate.agent.dns import DnsServer
from wardgate.agent.main import Agent, load_or_create_key
from wardgate.agent.wg import PrivateKey
from wardgate.agent.wg.fake import FakeDevice
from wardgate.cluster.resources.wire import PeerEntry, PeerSet, TunnelNetwork

NETWORK = TunnelNetwork(
    ipv4_range="100.64.0.0/10",
    ipv6_prefix="fd77::/64",
    gateway_ipv4="100.64.0.1",
    gateway_ipv6="fd77::1",
    dns_zone="local.example.com",
    http_port=80,
)


def _entry(key: PrivateKey, last: int, expires: datetime) -> PeerEntry:
    return PeerEntry(
        session=f"s{last}",
        user="alice",
        wg_public_key=key.public_key().to_base64(),
        allowed_ips=[f"100.64.0.{last}/32", f"fd77::{last}/128"],
        expires_at=expires,
    )


async def test_snapshots_and_expiry(tmp_path: Path) -> None:
    config = AgentConfig(
        cluster=ClusterConnection(token_file=tmp_path / "token"), state_dir=tmp_path, resync_interval=5
    )
    node_key = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == node_key
    assert (tmp_path / "private.key").stat().st_mode & 0o777 == 0o600
    agent = Agent(config, node_key, control=None, dns=DnsServer("lo"))  # type: ignore[arg-type]
    device = FakeDevice()

    async def opener() -> FakeDevice:
        return device

    agent.applier = Applier(opener)
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    expires_soon = datetime.now(UTC) + timedelta(seconds=0.4)
    async with asyncio.TaskGroup() as tasks:
        running = [tasks.create_task(agent.applier.run()), tasks.create_task(agent.reconcile())]
        far = datetime.now(UTC) + timedelta(hours=1)
        agent._take(NETWORK, PeerSet(revision=1, network=NETWORK, peers=[_entry(alice, 2, far)], services=["llm"]))
        await _until(lambda: len(device.current.peers) == 1)
        assert device.current.private_key == node_key and device.current.listen_port == 51820
        assert agent._dns.zone is not None and agent._dns.zone.services == frozenset({"llm"})

        peers = [_entry(alice, 2, far), _entry(bob, 3, expires_soon)]
        agent._take(NETWORK, PeerSet(revision=2, network=NETWORK, peers=peers, services=[]))
        await _until(lambda: len(device.current.peers) == 2)
        await _until(lambda: len(device.current.peers) == 1, within=2)
        late = (datetime.now(UTC) - expires_soon).total_seconds()
        assert device.current.peers[0].public_key == alice.public_key()
        assert late < 1.0, f"expired peer removed {late:.3f} s after its expiry"

        agent._take(NETWORK, PeerSet(revision=3, network=NETWORK, peers=[], services=[]))  # revoked
        started = time.perf_counter()
        await _until(lambda: not device.current.peers)
        assert time.perf_counter() - started < 0.5
        for task in running:
            task.cancel()


async def _until(condition, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
