"""ResourceCache: an in-memory copy of the store kept current by its change feed.

Everything on the request path (proxy, admin authentication) reads this, never the store. Listeners
are called after each applied batch of events, so components can rebuild and swap their state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Compacted, Event, EventType, Store

log = logging.getLogger(__name__)

Listener = Callable[[Sequence[Event]], None]


class ResourceCache:
    """A watch-fed read cache of every resource. Call `load()` once, then run `follow()` as a task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._items: dict[str, dict[str, AnyResource]] = {}
        self.revision = 0
        self._listeners: list[Listener] = []
        self._advanced = asyncio.Condition()

    def get(self, kind: str, name: str) -> AnyResource | None:
        return self._items.get(kind, {}).get(name)

    def list_kind(self, kind: str) -> list[AnyResource]:
        return sorted(self._items.get(kind, {}).values(), key=lambda r: r.metadata.name)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def load(self) -> None:
        revision, resources = await self._store.snapshot()
        items: dict[str, dict[str, AnyResource]] = {}
        for resource in resources:
            items.setdefault(resource.kind, {})[resource.metadata.name] = resource
        self._items, self.revision = items, revision
        self._notify([])

    def _apply(self, event: Event) -> None:
        bucket = self._items.setdefault(event.resource.kind, {})
        if event.type is EventType.DELETE:
            bucket.pop(event.resource.metadata.name, None)
        else:
            bucket[event.resource.metadata.name] = event.resource
        self.revision = event.revision

    def _notify(self, events: Sequence[Event]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:
                log.exception("cache listener %r failed", listener)

    async def follow(self) -> None:
        """Apply the change feed forever; on compaction, reload the whole snapshot."""
        while True:
            try:
                async for event in self._store.watch(self.revision):
                    self._apply(event)
                    self._notify([event])
                    async with self._advanced:
                        self._advanced.notify_all()
            except Compacted:
                log.warning("change feed compacted past revision %d; reloading", self.revision)
                await self.load()
            except Exception:
                # The node goes on serving from what it has; a store fault never takes the process down.
                log.exception("change feed failed after revision %d; following again in 1 s", self.revision)
                await asyncio.sleep(1)

    async def wait_for(self, revision: int) -> None:
        """Return once the cache has applied `revision` (callers bound the wait with asyncio.timeout)."""
        async with self._advanced:
            await self._advanced.wait_for(lambda: self.revision >= revision)
