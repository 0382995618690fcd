"""Revocation reaches open connections: deleting a Session, Credential or User (or disabling a User or a
Credential) ends that identity's in-flight requests and its idle keep-alive connections, in this worker.

    gateway identifies a request ─▶ LiveConnections.track(transport, user, session, credential)
                                    (one dict lookup when the connection keeps its identity)
    connection closes (ConnectionGuard) ─▶ forget(transport)
    cache event (every worker follows the change feed) ─▶ on_events ─▶ revoke(kind, name)
        ─▶ transport.abort() ─▶ aiohttp cancels the handler task (handler_cancellation): a relayed stream
           ends, the upstream request is dropped, the client sees its connection closed
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.user import User
from wardgate.cluster.store import Event, EventType
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(kind, name): ("User", "alice"), ("Session", "s-1"), ("Credential", "alice-pat")."""
REVOCABLE = frozenset({"User", "Session", "Credential"})


class LiveConnections:
    """Which open connections act for which User, Session and Credential (the last request's identity)."""

    def __init__(self) -> None:
        self._identity: dict[asyncio.Transport, tuple[str, str | None, str | None]] = {}
        self._by_key: dict[Key, set[asyncio.Transport]] = {}
        self.revoked = 0
        """Connections ended by a revocation so far."""

    def __len__(self) -> int:
        return len(self._identity)

    def track(
        self, transport: asyncio.Transport | None, user: str, session: str | None, credential: str | None
    ) -> None:
        if transport is None:
            return
        identity = (user, session, credential)
        previous = self._identity.get(transport)
        if previous == identity:
            return
        if previous is not None:
            self._unindex(transport, previous)
        self._identity[transport] = identity
        for key in _keys(identity):
            self._by_key.setdefault(key, set()).add(transport)

    def forget(self, transport: asyncio.Transport) -> None:
        identity = self._identity.pop(transport, None)
        if identity is not None:
            self._unindex(transport, identity)

    def _unindex(self, transport: asyncio.Transport, identity: tuple[str, str | None, str | None]) -> None:
        for key in _keys(identity):
            holders = self._by_key.get(key)
            if holders is not None:
                holders.discard(transport)
                if not holders:
                    del self._by_key[key]

    def revoke(self, kind: str, name: str) -> int:
        """Abort every connection acting for (kind, name); how many."""
        holders = self._by_key.pop((kind, name), None)
        if not holders:
            return 0
        for transport in list(holders):
            self.forget(transport)
            transport.abort()
        self.revoked += len(holders)
        log.info("revoked %s %r: ended %d open connection(s)", kind, name, len(holders))
        return len(holders)

    def on_events(self, events: Sequence[Event], cache: ResourceCache) -> None:
        """The cache listener: revoke what the events deleted or disabled."""
        if not events:
            # A reload of the whole snapshot (compaction): deletions came without events.
            for kind, name in list(self._by_key):
                if cache.get(kind, name) is None:
                    self.revoke(kind, name)
            return
        for event in events:
            resource = event.resource
            if resource.kind not in REVOCABLE:
                continue
            if event.type is EventType.DELETE or (
                isinstance(resource, User | Credential) and resource.spec.is_disabled
            ):
                self.revoke(resource.kind, resource.metadata.name)

    def follow(self, cache: ResourceCache) -> None:
        """Listen to `cache` (every worker has its own, fed by the store's change feed)."""
        cache.add_listener(lambda events: self.on_events(events, cache))


def _keys(identity: tuple[str, str | None, str | None]) -> list[Key]:
    user, session, credential = identity
    keys = [("User", user)]
    if session is not None:
        keys.append(("Session", session))
    if credential is not None:
        keys.append(("Credential", credential))
    return keys
