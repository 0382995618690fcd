"""LiveConnections: which connections a revocation ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import cast

from tests.factories import make_user
from wardgate.cluster.proxy.revocation import LiveConnections
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store import Event, EventType
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _transport() -> tuple[FakeTransport, asyncio.Transport]:
    fake = FakeTransport()
    return fake, cast(asyncio.Transport, fake)


def _session(name: str, user: str) -> Session:
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": name},
            "spec": {"user": user, "credential": "cred", "type": "CLIENTLESS", "expiresAt": expires},
        }
    )


def test_revoking_any_part_of_an_identity_ends_its_connections() -> None:
    for kind, name in (("User", "alice"), ("Session", "s1"), ("Credential", "cred")):
        live = LiveConnections()
        (fake, transport), (other_fake, other) = _transport(), _transport()
        live.track(transport, "alice", "s1", "cred")
        live.track(other, "bob", "s2", None)
        assert live.revoke(kind, name) == 1
        assert fake.aborted and not other_fake.aborted
        assert len(live) == 1 and live.revoke(kind, name) == 0


def test_a_connection_belongs_to_its_last_identity() -> None:
    live = LiveConnections()
    fake, transport = _transport()
    live.track(transport, "alice", "s1", None)
    live.track(transport, "alice", "s1", None)
    live.track(transport, "bob", "s2", None)
    assert live.revoke("User", "alice") == 0 and live.revoke("Session", "s1") == 0
    assert live.revoke("Session", "s2") == 1 and fake.aborted


def test_a_closed_connection_is_forgotten() -> None:
    live = LiveConnections()
    fake, transport = _transport()
    live.track(transport, "alice", "s1", None)
    live.forget(transport)
    assert len(live) == 0 and live.revoke("User", "alice") == 0 and not fake.aborted


def test_cache_events_revoke_deletions_and_disabled_users_only() -> None:
    live = LiveConnections()
    cache = ResourceCache(MemoryStore())
    (alice_fake, alice), (bob_fake, bob) = _transport(), _transport()
    live.track(alice, "alice", "s1", "cred")
    live.track(bob, "bob", "s2", None)
    live.on_events([Event(1, EventType.PUT, make_user("alice")), Event(2, EventType.PUT, _session("s2", "bob"))], cache)
    assert not alice_fake.aborted and not bob_fake.aborted
    live.on_events([Event(3, EventType.DELETE, _session("s2", "bob"))], cache)
    assert bob_fake.aborted and not alice_fake.aborted
    disabled = make_user("alice").model_copy(
        update={"spec": make_user("alice").spec.model_copy(update={"is_disabled": True})}
    )
    live.on_events([Event(4, EventType.PUT, disabled)], cache)
    assert alice_fake.aborted and len(live) == 0


def test_a_reload_revokes_what_is_gone_from_the_cache() -> None:
    live = LiveConnections()
    fake, transport = _transport()
    live.track(transport, "alice", "s1", None)
    live.on_events([], ResourceCache(MemoryStore()))
    assert fake.aborted
