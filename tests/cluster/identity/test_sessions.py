"""Sessions: the cap per owner (credential, or a user's browser logins), one commit, and the wait goes through
the Propagation the service was given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import make_user
from wardgate.cluster.errors import Unavailable
from wardgate.cluster.identity.sessions import DEFAULT_SESSIONS_PER_CREDENTIAL, SessionService, plan_session
from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.store import Create, Delete
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.propagation import LocalPropagation

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def credential(name: str = "ci", max_sessions: int | None = None, expires: datetime | None = None) -> Credential:
    spec: dict[str, object] = {"type": "OAUTH2", "user": "alice"}
    if max_sessions is not None:
        spec["maxSessions"] = max_sessions
    if expires is not None:
        spec["expiresAt"] = expires.isoformat()
    return Credential.model_validate({"kind": "Credential", "metadata": {"name": name}, "spec": spec})


def stored(name: str, minute: int, user: str = "alice", credential: str | None = None) -> Session:
    session = Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": name},
            "spec": {"user": user, "credential": credential, "type": "CLIENTLESS", "expiresAt": "2031-01-01T00:00:00Z"},
        }
    )
    result: Session = session.with_metadata(
        created_at=NOW + timedelta(minutes=minute), resource_version=str(minute + 1)
    )
    return result


@pytest.mark.parametrize(
    ("owner", "cap", "existing", "evicted"),
    [
        ("ci", 3, [("a", 2, "ci"), ("b", 1, "ci")], []),
        ("ci", 3, [("a", 2, "ci"), ("b", 1, "ci"), ("c", 3, "ci")], ["b"]),
        ("ci", 2, [("a", 2, "ci"), ("b", 1, "ci"), ("c", 3, "ci"), ("other", 0, "cd")], ["b", "a"]),
        ("ci", 1, [("a", 2, "ci"), ("browser", 0, None)], ["a"]),
        (None, 2, [("a", 2, None), ("b", 1, None), ("tool", 0, "ci"), ("bob", 0, None)], ["b"]),
    ],
)
def test_the_oldest_sessions_of_the_owner_beyond_its_cap_are_evicted(
    owner: str | None, cap: int, existing: list[tuple[str, int, str | None]], evicted: list[str]
) -> None:
    sessions = [stored(n, m, "bob" if n == "bob" else "alice", c) for n, m, c in existing]
    made = credential(owner) if owner else None
    session, evict = plan_session("alice", SessionType.CLIENTLESS, HOUR, sessions, credential=made, cap=cap, now=NOW)
    assert [s.metadata.name for s in evict] == evicted
    assert session.spec.credential == owner and session.spec.user == "alice"
    assert session.spec.expires_at == NOW + HOUR


def test_a_session_never_outlives_its_credential() -> None:
    made = credential(expires=NOW + timedelta(minutes=5))
    session, _ = plan_session("alice", SessionType.CLIENT, HOUR, [], credential=made, cap=1, now=NOW)
    assert session.spec.expires_at == NOW + timedelta(minutes=5) and session.spec.type is SessionType.CLIENT


@dataclass
class RecordingPropagation:
    """LocalPropagation that records the revisions it was asked to settle, or refuses them."""

    inner: LocalPropagation
    settled: list[int] = field(default_factory=list)
    refuse: bool = False

    async def settle(self, revision: int) -> None:
        self.settled.append(revision)
        if self.refuse:
            raise Unavailable(f"worker 2 has not applied revision {revision}")
        await self.inner.settle(revision)


@dataclass
class Node:
    store: MemoryStore
    cache: ResourceCache
    propagation: RecordingPropagation

    def service(self, **caps: int) -> SessionService:
        return SessionService(self.store, self.cache, self.propagation, **caps)

    def sessions(self) -> list[Session]:
        return [s for s in self.cache.list_kind("Session") if isinstance(s, Session)]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    store = MemoryStore()
    await store.commit([Create(make_user("alice")), Create(credential()), Create(credential("capped", 2))])
    cache = ResourceCache(store)
    await cache.load()
    async with asyncio.TaskGroup() as tasks:
        follower = tasks.create_task(cache.follow())
        yield Node(store, cache, RecordingPropagation(LocalPropagation(cache)))
        follower.cancel()


async def test_open_returns_once_the_propagation_has_settled_its_revision(node: Node) -> None:
    made = await node.service().open("alice", SessionType.CLIENTLESS, HOUR, credential=credential("capped", 2))
    assert node.propagation.settled == [int(made.metadata.resource_version or 0)]
    assert node.cache.get("Session", made.metadata.name) is not None


async def test_maxsessions_evicts_the_oldest_in_the_same_commit(node: Node) -> None:
    service, capped = node.service(), credential("capped", 2)
    opened = [await service.open("alice", SessionType.CLIENTLESS, HOUR, credential=capped) for _ in range(4)]
    assert {s.metadata.name for s in node.sessions()} == {s.metadata.name for s in opened[2:]}
    # each open is one commit: the new Session and its evictions share one revision
    assert len(set(node.propagation.settled)) == 4


async def test_a_credential_without_maxsessions_gets_the_default_cap_even_when_minted_at_once(node: Node) -> None:
    service, unlimited = node.service(default_cap=5), credential()
    opened = await asyncio.gather(
        *(service.open("alice", SessionType.CLIENTLESS, HOUR, credential=unlimited) for _ in range(40))
    )
    left = node.sessions()
    assert len(left) == 5
    newest = sorted(opened, key=lambda s: int(s.metadata.resource_version or 0))[-5:]
    assert {s.metadata.name for s in left} == {s.metadata.name for s in newest}
    assert SessionService(node.store, node.cache, node.propagation).cap(unlimited) == DEFAULT_SESSIONS_PER_CREDENTIAL


async def test_browser_logins_are_capped_per_user_apart_from_credential_sessions(node: Node) -> None:
    service = node.service(browser_cap=2)
    tool = await service.open("alice", SessionType.CLIENTLESS, HOUR, credential=credential())
    browsers = [await service.open("alice", SessionType.CLIENTLESS, HOUR) for _ in range(3)]
    assert {s.metadata.name for s in node.sessions()} == {tool.metadata.name, *(b.metadata.name for b in browsers[1:])}


@dataclass
class Reloading:
    """A Propagation over a cache that follows nothing: settling re-reads the store's snapshot."""

    cache: ResourceCache
    settled: list[int] = field(default_factory=list)

    async def settle(self, revision: int) -> None:
        self.settled.append(revision)
        await self.cache.load()


async def test_an_eviction_that_lost_a_race_is_planned_again() -> None:
    store = MemoryStore()
    await store.commit([Create(make_user("alice"))])
    cache = ResourceCache(store)
    await cache.load()
    propagation = Reloading(cache)
    service, capped = SessionService(store, cache, propagation), credential("capped", 2)
    first = await service.open("alice", SessionType.CLIENTLESS, HOUR, credential=capped)
    second = await service.open("alice", SessionType.CLIENTLESS, HOUR, credential=capped)
    # `first` ends behind the cache's back, as a logout on another worker would: the next open plans to evict
    # it, its commit fails with NotFound, and after catching up it is planned again (without an eviction).
    await store.commit([Delete("Session", first.metadata.name)])
    propagation.settled.clear()
    third = await service.open("alice", SessionType.CLIENTLESS, HOUR, credential=capped)
    assert len(propagation.settled) == 2
    assert {s.metadata.name for s in cache.list_kind("Session")} == {second.metadata.name, third.metadata.name}


async def test_revoke_waits_for_the_propagation_and_says_whether_it_ended_the_session(node: Node) -> None:
    service = node.service()
    made = await service.open("alice", SessionType.CLIENTLESS, HOUR)
    node.propagation.settled.clear()
    assert await service.revoke(made.metadata.name) is True
    assert node.propagation.settled == [await node.store.revision()]
    assert node.cache.get("Session", made.metadata.name) is None
    assert await service.revoke(made.metadata.name) is False


async def test_a_write_no_worker_enforces_in_time_is_unavailable(node: Node) -> None:
    node.propagation.refuse = True
    with pytest.raises(Unavailable, match="worker 2"):
        await node.service().open("alice", SessionType.CLIENTLESS, HOUR)
