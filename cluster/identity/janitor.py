"""Deletes Sessions past their expiry, so the store and `get sessions` do not fill with dead ones.

Expired sessions are refused at once by the authenticator whatever this task does; this only cleans up.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from wardgate.cluster.errors import NotFound
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store import Delete, Store
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)


async def expire_sessions(store: Store, cache: ResourceCache, interval: float = 30.0) -> None:
    while True:
        now = datetime.now(UTC)
        for session in cache.list_kind("Session"):
            if isinstance(session, Session) and session.spec.expires_at <= now:
                try:
                    await store.commit([Delete("Session", session.metadata.name, session.metadata.resource_version)])
                    log.info("session %s expired and was deleted", session.metadata.name)
                except NotFound:
                    pass
                except Exception:
                    log.exception("could not delete expired session %s", session.metadata.name)
        await asyncio.sleep(interval)
