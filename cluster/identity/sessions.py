"""Sessions: made from a verified Credential, bounded by it, and revoked by deleting them.

`new_session` is pure: it returns the Session to create and the older Sessions of the same
Credential to delete (when `maxSessions` is exceeded), for the caller to commit in one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cluster.resources.credential import Credential
from cluster.resources.session import Session, SessionType

CLIENTLESS_TTL = timedelta(hours=1)


def new_session(
    credential: Credential,
    session_type: SessionType,
    existing: Iterable[Session],
    ttl: timedelta = CLIENTLESS_TTL,
    now: datetime | None = None,
) -> tuple[Session, list[Session]]:
    current = now or datetime.now(UTC)
    expires = current + ttl
    if credential.spec.expires_at is not None:
        expires = min(expires, credential.spec.expires_at)
    session = Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": f"{credential.spec.user[:40]}-{secrets.token_hex(6)}"},
            "spec": {
                "user": credential.spec.user,
                "credential": credential.metadata.name,
                "type": session_type.value,
                "expiresAt": expires.isoformat(),
            },
        }
    )
    evict: list[Session] = []
    limit = credential.spec.max_sessions
    if limit is not None:
        mine = sorted(
            (s for s in existing if s.spec.credential == credential.metadata.name),
            key=lambda s: s.metadata.created_at or current,
        )
        evict = mine[: max(0, len(mine) - (limit - 1))]
    return session, evict


def sessions_of_credential(sessions: Iterable[Session], credential: str) -> list[Session]:
    return [s for s in sessions if s.spec.credential == credential]


def sessions_of_user(sessions: Iterable[Session], user: str) -> list[Session]:
    return [s for s in sessions if s.spec.user == user]
