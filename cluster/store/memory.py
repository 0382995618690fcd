"""MemoryStore: the Store protocol in a dict, for unit tests and throw-away clusters."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence

from wardgate.cluster.errors import NotFound
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Compacted, Event, EventType, Op, Store
from wardgate.cluster.store.ops import apply_op, key_of


class MemoryStore:
    """Same semantics as SQLiteStore (atomic commits, revisions, watch), nothing persisted."""

    def __init__(self, keep_events: int = 10_000) -> None:
        self._items: dict[tuple[str, str], AnyResource] = {}
        self._events: list[Event] = []
        self._revision = 0
        self._keep = keep_events
        self._changed = asyncio.Condition()

    async def get(self, kind: str, name: str) -> AnyResource:
        try:
            return self._items[(kind, name)]
        except KeyError:
            raise NotFound(f"{kind.lower()}/{name} not found") from None

    async def list_kind(self, kind: str) -> list[AnyResource]:
        return sorted((r for (k, _), r in self._items.items() if k == kind), key=lambda r: r.metadata.name)

    async def revision(self) -> int:
        return self._revision

    async def snapshot(self) -> tuple[int, list[AnyResource]]:
        return self._revision, list(self._items.values())

    async def commit(self, ops: Sequence[Op]) -> list[AnyResource | None]:
        staged = dict(self._items)
        events: list[Event] = []
        results: list[AnyResource | None] = []
        revision = self._revision
        for op in ops:
            revision += 1
            key = key_of(op)
            previous = staged.get(key)
            result = apply_op(op, previous, revision)
            if result is None:
                assert previous is not None
                del staged[key]
                events.append(Event(revision, EventType.DELETE, previous))
            else:
                staged[key] = result
                events.append(Event(revision, EventType.PUT, result))
            results.append(result)
        self._items, self._revision = staged, revision
        self._events = (self._events + events)[-self._keep :]
        async with self._changed:
            self._changed.notify_all()
        return results

    async def watch(self, after: int) -> AsyncIterator[Event]:
        while True:
            if self._events and after < self._events[0].revision - 1:
                raise Compacted(f"revision {after} is compacted")
            pending = [e for e in self._events if e.revision > after]
            for event in pending:
                yield event
                after = event.revision
            if not pending:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._newer_than, after))

    def _newer_than(self, revision: int) -> bool:
        return self._revision > revision

    async def close(self) -> None:
        return None


_: Store = MemoryStore()
