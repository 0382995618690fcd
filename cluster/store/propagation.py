"""Propagation: a write is acknowledged only once every worker of this node serves it.

    write path ─▶ store.commit ─▶ Propagation.settle(revision)
        ─▶ nudge the other workers (they poll the store at once instead of at their next tick)
        ─▶ wait until each live worker's board slot says "applied ≥ revision" (cache applied *and* the
           gateway state rebuilt for the kinds it depends on), bounded: Unavailable names a stuck worker

`LocalPropagation` is the single-process form (tests, one worker): it waits for this process's own
cache. The node's multi-worker form lives in `cluster/store/workers.py`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from wardgate.cluster.errors import Unavailable

SETTLE_TIMEOUT = 5.0


class Propagation(Protocol):
    """How a writer waits until its write is enforced everywhere on this node."""

    async def settle(self, revision: int) -> None:
        """Return once every worker serves `revision` or later; raise Unavailable when one does not in time."""
        ...


class Applied(Protocol):
    """What a process has applied: its ResourceCache, or its gateway StateHolder (cache and compiled state)."""

    async def wait_for(self, revision: int) -> None: ...


class LocalPropagation:
    """One worker: wait for this process's cache (or its gateway state) to reach the revision."""

    def __init__(self, cache: Applied, timeout: float = SETTLE_TIMEOUT) -> None:
        self._cache = cache
        self._timeout = timeout

    async def settle(self, revision: int) -> None:
        try:
            await asyncio.wait_for(self._cache.wait_for(revision), self._timeout)
        except TimeoutError:
            raise Unavailable(
                f"this node has not applied revision {revision} within {self._timeout:g} s; the write is stored "
                "but may not be enforced yet"
            ) from None


_: Propagation = LocalPropagation.__new__(LocalPropagation)
