"""StateHolder: the current GatewayState, rebuilt beside the request path and swapped whole.

    cache event ─▶ kind in STATE_KINDS? ─ no ─▶ applied = cache revision at once (Sessions, Credentials...)
                                        └ yes ─▶ mark dirty ─▶ the rebuild task: snapshot the cache (on the
                                                  loop), compile in a thread, swap ─▶ applied = the snapshot's
                                                  revision (later state events keep it below themselves)
    applied ─▶ listeners (the worker board) and `wait_for` (a writer in this process)

A request reads `holder()` once and keeps that state to its end: it never waits for a rebuild and never
sees half of one. `applied` never claims a revision whose state change is not compiled yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from wardgate.cluster.authorize.state import STATE_KINDS, GatewayState, build_state
from wardgate.cluster.plugins.registry import PluginBuilder
from wardgate.cluster.policy import cel
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Event
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0
"""Seconds before a failed rebuild is tried again (the previous state keeps serving meanwhile)."""


class _Snapshot:
    """The state kinds of the cache at one revision, for a build off the loop (the cache keeps changing)."""

    def __init__(self, cache: ResourceCache) -> None:
        self._items = {kind: cache.list_kind(kind) for kind in STATE_KINDS}

    def list_kind(self, kind: str) -> list[AnyResource]:
        return self._items.get(kind, [])


class StateHolder:
    """Call it for the current state; run `rebuild_forever()` as a task of the process."""

    def __init__(self, cache: ResourceCache, compiler: cel.Compiler, admin_policies: Sequence[str] = ()) -> None:
        self._cache = cache
        self._compiler = compiler
        self._admin_policies = tuple(admin_policies)
        self.plugins = PluginBuilder()
        self._state = build_state(cache, compiler, self.plugins, self._admin_policies)
        self._built = cache.revision
        self._pending: int | None = None
        """The lowest revision of a state-kind event not compiled yet, and not in the build under way."""
        self._building: int | None = None
        """The lowest revision of a state-kind event the build under way compiles."""
        self.applied = cache.revision
        self._dirty = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._listeners: list[Callable[[int], None]] = []
        cache.add_listener(self._on_events)

    def __call__(self) -> GatewayState:
        return self._state

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Called with the applied revision whenever it advances."""
        self._listeners.append(listener)
        listener(self.applied)

    def _on_events(self, events: Sequence[Event]) -> None:
        # No events: a (re)load of the whole snapshot, which may change anything.
        if not events or any(e.resource.kind in STATE_KINDS for e in events):
            first = min((e.revision for e in events), default=self._cache.revision)
            self._pending = first if self._pending is None else min(self._pending, first)
            self._dirty.set()
        self._advance()

    def _advance(self) -> None:
        blocked = [r for r in (self._pending, self._building) if r is not None]
        applied = self._cache.revision if not blocked else max(self._built, min(blocked) - 1)
        if applied <= self.applied:
            return
        self.applied = applied
        for listener in self._listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("state listener %r failed", listener)
        waiting = []
        for wanted, future in self._waiters:
            if wanted <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((wanted, future))
        self._waiters = waiting

    async def wait_for(self, revision: int) -> None:
        """Return once this process serves `revision` (cache and state); bound it with a timeout."""
        if self.applied >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        await future

    async def rebuild(self) -> None:
        """One rebuild now, from the cache as it is (also what `rebuild_forever` does on each change)."""
        self._dirty.clear()
        revision = self._cache.revision
        snapshot = _Snapshot(self._cache)
        first, self._pending = self._pending, None
        self._building = first
        try:
            state = await asyncio.to_thread(build_state, snapshot, self._compiler, self.plugins, self._admin_policies)
        except Exception:
            log.exception("gateway state rebuild failed; keeping the previous state")
            if first is not None:
                self._pending = first if self._pending is None else min(first, self._pending)
            self._dirty.set()
            raise
        finally:
            self._building = None
        self._state = state
        self._built = revision
        self._advance()

    async def rebuild_forever(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.rebuild()
            except Exception:
                await asyncio.sleep(RETRY_AFTER)
