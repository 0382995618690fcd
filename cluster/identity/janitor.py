"""Deletes Sessions and authorization codes past their expiry, so the store and `get sessions` do not fill
with dead ones.

Expired sessions are refused at once by the authenticator, expired codes by the token endpoint, whatever this
task does; this only cleans up.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from wardgate.cluster.errors import Conflict, NotFound
from wardgate.cluster.resources.oauth_client import AuthorizationCode
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store import Delete, Store
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)


async def expire_sessions(store: Store, cache: ResourceCache, interval: float = 30.0) -> None:
    while True:
        now = datetime.now(UTC)
        expired = [
            r
            for r in (*cache.list_kind("Session"), *cache.list_kind("AuthorizationCode"))
            if isinstance(r, Session | AuthorizationCode) and r.spec.expires_at <= now
        ]
        for resource in expired:
            kind, name = resource.kind, resource.metadata.name
            try:
                await store.commit([Delete(kind, name, resource.metadata.resource_version)])
                log.info("%s %s expired and was deleted", kind, name)
            except (NotFound, Conflict):
                pass
            except Exception:
                log.exception("could not delete expired %s %s", kind, name)
        await asyncio.sleep(interval)
