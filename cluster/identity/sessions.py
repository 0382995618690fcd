"""Sessions: minted, capped and revoked in one place, and a write counts once this node enforces it.

    open(user, type, ttl, credential?) ─▶ plan_session (pure): the new Session + the owner's oldest Sessions
        beyond its cap ─▶ store.commit [Create, Delete...] in one transaction ─▶ Propagation.settle(revision)
    revoke(name) ─▶ store.commit [Delete] ─▶ Propagation.settle

The owner of a Session is its Credential or, for a browser login (no credential), its User. Opens for one
owner run one at a time in this process, so the cap is exact on one worker; across workers two opens that
race may leave the owner one Session over the cap until its next open.
"""

from __future__ import annotations

import asyncio
import secrets
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from wardgate.cluster.errors import Conflict, NotFound, Unavailable
from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.store import Create, Delete, Op, Store
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.propagation import Propagation

CLIENTLESS_TTL = timedelta(hours=1)
"""Lifetime of a Session made by the OAuth2 token endpoint (never beyond its credential's expiry)."""
DEFAULT_SESSIONS_PER_CREDENTIAL = 20
"""The cap of a Credential without `maxSessions` (SECURITY: one OAuth2 client minted 200 live Sessions in 0.7 s)."""
BROWSER_SESSIONS_PER_USER = 10
"""The cap of a User's browser-login Sessions (those without a credential): ten browsers signed in at once."""
_STRIPES = 64
_ATTEMPTS = 8


def plan_session(
    user: str,
    session_type: SessionType,
    ttl: timedelta,
    existing: Iterable[Session],
    *,
    credential: Credential | None = None,
    cap: int,
    now: datetime | None = None,
) -> tuple[Session, list[Session]]:
    """The Session to create and the owner's oldest Sessions to delete so that, with it, `cap` remain.

    The expiry never passes the credential's; the owner's Sessions are those of `credential`, or the
    `user`'s credential-less ones when there is none.
    """
    current = now or datetime.now(UTC)
    expires = current + ttl
    if credential is not None and credential.spec.expires_at is not None:
        expires = min(expires, credential.spec.expires_at)
    session = Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": f"{user[:40]}-{secrets.token_hex(6)}"},
            "spec": {
                "user": user,
                "credential": credential.metadata.name if credential is not None else None,
                "type": session_type.value,
                "expiresAt": expires.isoformat(),
            },
        }
    )
    if credential is not None:
        mine = [s for s in existing if s.spec.credential == credential.metadata.name]
    else:
        mine = [s for s in existing if s.spec.credential is None and s.spec.user == user]
    mine.sort(key=lambda s: (s.metadata.created_at or current, int(s.metadata.resource_version or 0)))
    return session, mine[: max(0, len(mine) - (cap - 1))]


class SessionService:
    """Opens and revokes Sessions; each call returns once this node enforces the write (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        cache: ResourceCache,
        propagation: Propagation,
        *,
        default_cap: int = DEFAULT_SESSIONS_PER_CREDENTIAL,
        browser_cap: int = BROWSER_SESSIONS_PER_USER,
    ) -> None:
        if default_cap < 1 or browser_cap < 1:
            raise ValueError("session caps must be at least 1")
        self._store = store
        self._cache = cache
        self._propagation = propagation
        self._default_cap = default_cap
        self._browser_cap = browser_cap
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]

    def cap(self, credential: Credential | None) -> int:
        """How many live Sessions the owner may hold."""
        if credential is None:
            return self._browser_cap
        return credential.spec.max_sessions or self._default_cap

    async def open(
        self, user: str, session_type: SessionType, ttl: timedelta, credential: Credential | None = None
    ) -> Session:
        """A new stored Session; the owner's oldest Sessions beyond its cap are deleted in the same commit.

        Raises Unavailable when the write is stored but not yet enforced on every worker.
        """
        owner = f"credential/{credential.metadata.name}" if credential is not None else f"user/{user}"
        async with self._locks[zlib.crc32(owner.encode()) % _STRIPES]:
            for _ in range(_ATTEMPTS):
                existing = [s for s in self._cache.list_kind("Session") if isinstance(s, Session)]
                session, evict = plan_session(
                    user, session_type, ttl, existing, credential=credential, cap=self.cap(credential)
                )
                ops: list[Op] = [
                    Create(session),
                    *(Delete("Session", s.metadata.name, s.metadata.resource_version) for s in evict),
                ]
                try:
                    stored, *_ = await self._store.commit(ops)
                except (NotFound, Conflict):
                    # A Session to evict ended or changed meanwhile (logout, janitor, connect, another worker).
                    await self._propagation.settle(await self._store.revision())
                    continue
                assert isinstance(stored, Session)
                await self.enforced(stored)
                return stored
        raise Unavailable(f"could not open a session for {owner}: its sessions kept changing; try again")

    async def revoke(self, name: str) -> bool:
        """Delete the Session; False when it had already ended. Returns once the deletion is enforced."""
        try:
            await self._store.commit([Delete("Session", name)])
        except NotFound:
            return False
        await self._propagation.settle(await self._store.revision())
        return True

    async def enforced(self, stored: Session) -> None:
        """Wait until every worker serves this write of the Session (a resource the store returned)."""
        await self._propagation.settle(int(stored.metadata.resource_version or 0))
