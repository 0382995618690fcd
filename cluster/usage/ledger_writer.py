"""Usage rows from the request path to the ledger: a bounded queue, and batches written by one task per worker,
retried while the database is away.

    Meter.log(row) ─▶ add(): append (O(1), never awaits) ─▶ full (`limit` rows waiting): dropped and counted
    run() ─▶ every `interval`, or at once when a batch is full ─▶ up to `batch` rows under a new batch id
        ─▶ ledger.write(id, rows) ─▶ written: the next batch
                                  └▶ Unavailable: logged once per outage, counted; the same batch (same id,
                                     so a write whose answer was lost counts once) again after a backoff
    every PRUNE_INTERVAL ─▶ ledger.prune(now - retention)
    cancelled (shutdown) ─▶ one last flush, bounded by `final_timeout`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.usage.ledger import Ledger, LedgerRow

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
MAX_BACKOFF = 10.0

Failure = Callable[[str, int], None]
"""Told of each failure: ("write", 1) for a failed write attempt, ("dropped", n) for rows dropped."""


class LedgerWriter:
    """One per worker (see the module docstring). `pending` rows are queued or in the batch being written."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        retention: float | None = None,
        limit: int = 100_000,
        batch: int = 1000,
        interval: float = 0.25,
        final_timeout: float = 5.0,
        on_failure: Failure | None = None,
    ) -> None:
        self.ledger = ledger
        self.retention = retention
        self.limit = limit
        self.batch = batch
        self.interval = interval
        self.final_timeout = final_timeout
        self.failures = 0
        """Failed write attempts."""
        self.dropped = 0
        """Rows dropped: the queue was full, or a write failed in a way a retry cannot mend."""
        self._on_failure = on_failure
        self._queue: deque[LedgerRow] = deque()
        self._current: tuple[uuid.UUID, list[LedgerRow]] | None = None
        self._wake = asyncio.Event()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = interval
        self._dropping = False

    @property
    def pending(self) -> int:
        return len(self._queue) + (len(self._current[1]) if self._current is not None else 0)

    def add(self, row: LedgerRow) -> None:
        """Queue a row (the request path: never waits)."""
        if self.pending >= self.limit:
            self._drop(1, "the queue is full")
            return
        self._dropping = False
        self._queue.append(row)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self._on_failure is not None:
            self._on_failure("dropped", count)
        if not self._dropping:
            self._dropping = True
            log.error("usage ledger: records dropped (%s; %d waiting, the limit is %d)", why, self.pending, self.limit)

    async def flush(self) -> bool:
        """Write what is queued now, batch after batch; False when a write failed (its batch stays, for a retry).
        Rows queued while it writes wait for the next tick: chasing them turned the writer under load into a
        stream of small commits (80 a second, each rewriting the same pages), a CPU cost on every request."""
        left = len(self._queue)
        while True:
            if self._current is None:
                if not self._queue or left <= 0:
                    return True
                left -= min(len(self._queue), self.batch)
                taken = [self._queue.popleft() for _ in range(min(len(self._queue), self.batch))]
                self._current = (uuid.uuid4(), taken)
            batch, rows = self._current
            try:
                await self.ledger.write(batch, rows)
            except Unavailable as exc:
                self._failed(exc)
                return False
            except Exception:
                # Not the database being away: a retry would fail the same way and hold up every later row.
                log.exception("usage ledger: a batch of %d records could not be written; dropped", len(rows))
                self._current = None
                self._count_failure()
                self._drop(len(rows), "a write failed")
                continue
            self._current = None
            self._written()

    def _count_failure(self) -> None:
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure("write", 1)

    def _failed(self, exc: Unavailable) -> None:
        self._count_failure()
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._backoff = now, self.interval
            log.warning(
                "usage ledger: %d records not written yet (%s); kept (up to %d) and retried",
                self.pending,
                exc,
                self.limit,
            )
        else:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._retry_at = now + self._backoff

    def _written(self) -> None:
        if self._down_since is not None:
            log.info("usage ledger: written again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None

    async def _prune(self) -> None:
        if not self.retention:
            return
        try:
            removed = await self.ledger.prune(time.time() - self.retention)
        except Unavailable as exc:
            log.warning("usage ledger: pruning failed (%s); trying again in an hour", exc)
            return
        if removed:
            log.info("usage ledger: %d records older than the retention removed", removed)

    async def run(self) -> None:
        pruned = -PRUNE_INTERVAL
        try:
            while True:
                wait = self.interval if self._down_since is None else max(self._retry_at - time.monotonic(), 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
                if self._down_since is not None and time.monotonic() < self._retry_at:
                    continue
                if await self.flush() and time.monotonic() - pruned > PRUNE_INTERVAL:
                    pruned = time.monotonic()
                    await self._prune()
        finally:
            await asyncio.shield(self._last_flush())

    async def _last_flush(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.final_timeout):
                while self.pending and await self.flush():
                    pass
        if self.pending:
            log.error("usage ledger: %d records not written at shutdown", self.pending)
