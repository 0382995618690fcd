"""Tunnel addresses: unique under concurrent commits (the store decides), stable per Session, reclaimed after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, ip_address
from pathlib import Path

import pytest

from tests.factories import make_user
from wardgate.agent.wg import PrivateKey
from wardgate.cluster.errors import Conflict, Forbidden, Unauthenticated, Unavailable
from wardgate.cluster.identity.addresses import AddressAllocator, TunnelIdentities, TunnelSettings, connected_sessions
from wardgate.cluster.resources.node import AddressLease, lease_name
from wardgate.cluster.resources.session import Session
from wardgate.cluster.resources.user import User
from wardgate.cluster.store import Create, Delete, Store, Update
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.propagation import LocalPropagation
from wardgate.cluster.store.sqlite import SQLiteStore

SETTINGS = TunnelSettings()


def session(name: str, kind: str = "CLIENT", ttl: float = 3600) -> Session:
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    return Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": name},
            "spec": {"user": "alice", "type": kind, "expiresAt": expires.isoformat()},
        }
    )


def key() -> str:
    return PrivateKey.generate().public_key().to_base64()


class Node:
    """A store, a cache that follows it, and an allocator: one cluster process."""

    def __init__(self, store: Store, settings: TunnelSettings = SETTINGS) -> None:
        self.store = store
        self.cache = ResourceCache(store)
        self.allocator = AddressAllocator(store, self.cache, LocalPropagation(self.cache), settings)
        self._follower: asyncio.Task[None] | None = None

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        await self.cache.load()
        self._follower = tasks.create_task(self.cache.follow())

    async def settle(self) -> None:
        await asyncio.wait_for(self.cache.wait_for(await self.store.revision()), 5)

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    store = MemoryStore()
    await store.commit([Create(make_user("alice"))])
    running = Node(store)
    async with asyncio.TaskGroup() as tasks:
        await running.start(tasks)
        yield running
        running.stop()


def addresses(cache: ResourceCache) -> list[tuple[str, str]]:
    found = []
    for item in cache.list_kind("Session"):
        assert isinstance(item, Session)
        if item.spec.tunnel_ipv4:
            assert item.spec.tunnel_ipv6 is not None
            found.append((item.spec.tunnel_ipv4, item.spec.tunnel_ipv6))
    return found


async def test_first_addresses_follow_the_gateway_and_stay_with_the_session(node: Node) -> None:
    await node.store.commit([Create(session("s1")), Create(session("s2"))])
    await node.settle()
    first = await node.allocator.bind("s1", key())
    assert (first.spec.tunnel_ipv4, first.spec.tunnel_ipv6) == ("100.64.0.2", "fd77:6172:6467::2")
    again = await node.allocator.bind("s1", new_key := key())  # reconnect with a new key: same addresses
    assert (again.spec.tunnel_ipv4, again.spec.wg_public_key) == ("100.64.0.2", new_key)
    assert (await node.allocator.bind("s1", new_key)).metadata.resource_version == again.metadata.resource_version
    off = await node.allocator.bind("s1", None)  # disconnect: the key goes, the addresses stay
    assert (off.spec.wg_public_key, off.spec.tunnel_ipv4) == (None, "100.64.0.2")
    second = await node.allocator.bind("s2", key())
    assert second.spec.tunnel_ipv4 == "100.64.0.3"
    leases = {lease.metadata.name for lease in node.cache.list_kind("AddressLease")}
    assert leases == {lease_name(a) for pair in addresses(node.cache) for a in pair}


async def test_concurrent_binds_never_share_an_address(node: Node) -> None:
    names = [f"s{i}" for i in range(40)]
    await node.store.commit([Create(session(n)) for n in names])
    await node.settle()
    bound = await asyncio.gather(*(node.allocator.bind(n, key()) for n in names))
    v4 = [s.spec.tunnel_ipv4 for s in bound]
    v6 = [s.spec.tunnel_ipv6 for s in bound]
    assert len(set(v4)) == len(v4) == 40 and len(set(v6)) == 40
    assert all(ip_address(a) in SETTINGS.ipv4_range and a != "100.64.0.1" for a in v4 if a)
    await node.settle()
    assert len(node.cache.list_kind("AddressLease")) == 80


async def test_two_processes_on_one_sqlite_file_race_without_collision(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    names = [f"s{i}" for i in range(30)]
    await first.commit([Create(make_user("alice")), *(Create(session(n)) for n in names)])
    nodes = [Node(first), Node(second)]
    try:
        async with asyncio.TaskGroup() as tasks:
            for each in nodes:
                await each.start(tasks)
                await each.settle()
            bound = await asyncio.gather(*(nodes[i % 2].allocator.bind(name, key()) for i, name in enumerate(names)))
            for each in nodes:
                each.stop()
    finally:
        await first.close()
        await second.close()
    pairs = [(s.spec.tunnel_ipv4, s.spec.tunnel_ipv6) for s in bound]
    assert len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == 30


async def test_a_gone_sessions_address_is_taken_over(node: Node) -> None:
    await node.store.commit([Create(session("old")), Create(session("new"))])
    await node.settle()
    old = await node.allocator.bind("old", key())
    await node.store.commit([Delete("Session", "old")])  # revoked: its lease lingers until reclaimed
    await node.settle()
    new = await node.allocator.bind("new", key())
    assert new.spec.tunnel_ipv4 == old.spec.tunnel_ipv4
    lease = node.cache.get("AddressLease", lease_name(str(old.spec.tunnel_ipv4)))
    assert isinstance(lease, AddressLease) and lease.spec.session == "new"


async def test_refusals(node: Node) -> None:
    await node.store.commit([Create(session("web", kind="CLIENTLESS")), Create(session("late", ttl=-1))])
    await node.settle()
    with pytest.raises(Forbidden, match="only CLIENT sessions"):
        await node.allocator.bind("web", key())
    with pytest.raises(Unauthenticated, match="expired"):
        await node.allocator.bind("late", key())
    with pytest.raises(Unauthenticated, match="revoked"):
        await node.allocator.bind("missing", key())
    await node.store.commit([Create(session("a")), Create(session("b"))])
    await node.settle()
    shared = key()
    await node.allocator.bind("a", shared)
    with pytest.raises(Conflict, match="belongs to another session"):
        await node.allocator.bind("b", shared)


async def test_a_full_range_says_so() -> None:
    store = MemoryStore()
    await store.commit([Create(make_user("alice")), Create(session("a")), Create(session("b"))])
    small = Node(store, TunnelSettings(ipv4_range=IPv4Network("100.64.0.0/30")))
    async with asyncio.TaskGroup() as tasks:
        await small.start(tasks)
        assert (await small.allocator.bind("a", key())).spec.tunnel_ipv4 == "100.64.0.2"
        with pytest.raises(Unavailable, match="no free address"):
            await small.allocator.bind("b", key())
        small.stop()


async def test_identities_by_tunnel_address(node: Node) -> None:
    await node.store.commit([Create(session("s1")), Create(session("s2"))])
    await node.settle()
    one = await node.allocator.bind("s1", key())
    identities = TunnelIdentities(node.cache)
    assert identities.identify(one.spec.tunnel_ipv4).session == one
    assert identities.identify(one.spec.tunnel_ipv6).user.metadata.name == "alice"
    assert identities.identify(f"::ffff:{one.spec.tunnel_ipv4}").session == one
    for remote, reason in (("100.64.0.99", "no session holds"), (None, "no session holds"), ("x", "no session")):
        with pytest.raises(Unauthenticated, match=reason):
            identities.identify(remote)
    assert [s.metadata.name for s in connected_sessions(node.cache)] == ["s1"]

    await node.allocator.bind("s1", None)
    with pytest.raises(Unauthenticated, match="disconnected"):
        identities.identify(one.spec.tunnel_ipv4)
    await node.allocator.bind("s1", key())
    user = node.cache.get("User", "alice")
    assert isinstance(user, User)
    disabled = user.model_copy(update={"spec": user.spec.model_copy(update={"is_disabled": True})})
    await node.store.commit([Update(disabled)])
    await node.settle()
    with pytest.raises(Unauthenticated, match="disabled"):
        identities.identify(one.spec.tunnel_ipv4)
    assert connected_sessions(node.cache) == []
    await node.store.commit([Delete("Session", "s1")])
    await node.settle()
    with pytest.raises(Unauthenticated, match="no session holds"):
        identities.identify(one.spec.tunnel_ipv4)


def test_settings_refuse_public_and_non_ula_ranges() -> None:
    with pytest.raises(ValueError, match="non-global"):
        TunnelSettings.model_validate({"ipv4_range": "8.8.8.0/24"})
    with pytest.raises(ValueError, match="ULA"):
        TunnelSettings.model_validate({"ipv6_prefix": "2001:db8::/64"})
    network = TunnelSettings.model_validate({"ipv4_range": "10.99.0.0/16", "dns_label": "wg"}).network("example.com")
    assert (network.gateway_ipv4, network.dns_zone) == ("10.99.0.1", "wg.example.com")
