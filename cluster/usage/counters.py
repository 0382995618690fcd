"""Quota counters: the Counters protocol, and the node-local implementation shared by all workers of a node.

    charge([Charge(key, amount, limit, ttl), ...]) ─▶ all-or-nothing: every `current + amount <= limit`,
        then every counter grows; else nothing changes and the first refused index comes back
    adjust([(key, delta, ttl), ...])             ─▶ reconcile a reservation with what was really used
    read(keys)                                   ─▶ current values (`ctx.usage`, `get quotas`)

LocalCounters keeps the counters in a memory-mapped file under the node's run directory (an open-addressing
table of hashed keys), and every operation holds an exclusive `flock` on it for a few microseconds: exact
across the worker processes of one node. Across nodes, use Redis (redis_counters.py). Every value is an
integer (requests, tokens, or cost in nano-units of the currency); a key expires at the end of its window.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wardgate.cluster.errors import Unavailable

_HEADER = struct.Struct("<8sq")
_MAGIC = b"WGCOUNT1"
_SLOT = struct.Struct("<16sqq")
"""sha256(key)[:16], expiry (ms since the epoch; 0: never used), value."""
SLOTS = 1 << 16
MAX_PROBE = 4096


@dataclass(frozen=True, slots=True)
class Charge:
    """Add `amount` to `key` if that keeps it at or under `limit`; `ttl` (seconds) is the rest of its window."""

    key: str
    amount: int
    limit: int
    ttl: float


@dataclass(frozen=True, slots=True)
class Charged:
    """`refused`: the index of the first charge over its limit (nothing was added), else None. `values`: every
    counter after the charge (or as it stands, when refused)."""

    refused: int | None
    values: list[int]


class Counters(Protocol):
    """Where quota counters live. Every method raises Unavailable when the counters cannot be reached."""

    async def charge(self, charges: Sequence[Charge]) -> Charged: ...

    async def adjust(self, deltas: Sequence[tuple[str, int, float]]) -> None: ...

    async def read(self, keys: Sequence[str]) -> list[int]: ...

    async def close(self) -> None: ...


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()[:16]


class LocalCounters:
    """Counters in a shared memory-mapped file: exact across the processes of one node (see the module doc)."""

    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = _HEADER.size + slots * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked_fd():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
                os.pwrite(self._fd, _HEADER.pack(_MAGIC, slots), 0)
            magic, stored = _HEADER.unpack(os.pread(self._fd, _HEADER.size, 0))
        if magic != _MAGIC:
            os.close(self._fd)
            raise Unavailable(f"{path} is not a Wardgate counter file")
        self.slots = stored
        self._map = mmap.mmap(self._fd, _HEADER.size + stored * _SLOT.size)

    @contextlib.contextmanager
    def _locked_fd(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _find(self, digest: bytes, now_ms: int) -> tuple[int, int]:
        """(slot, value now): the key's slot (its value 0 when expired), or a reusable one (value 0)."""
        start = int.from_bytes(digest[:8], "little") % self.slots
        reusable = -1
        for probe in range(min(MAX_PROBE, self.slots)):
            slot = (start + probe) % self.slots
            stored, expiry, value = _SLOT.unpack_from(self._map, _HEADER.size + slot * _SLOT.size)
            if expiry == 0:
                return (reusable if reusable >= 0 else slot), 0
            if stored == digest:
                return slot, value if expiry > now_ms else 0
            if expiry <= now_ms and reusable < 0:
                reusable = slot
        if reusable >= 0:
            return reusable, 0
        raise Unavailable("the node's quota counter table is full")

    def _write(self, slot: int, digest: bytes, expiry: int, value: int) -> None:
        _SLOT.pack_into(self._map, _HEADER.size + slot * _SLOT.size, digest, expiry, value)

    def charge_now(self, charges: Sequence[Charge]) -> Charged:
        now_ms = int(time.time() * 1000)
        digests = [_digest(c.key) for c in charges]
        with self._locked_fd():
            found = [self._find(d, now_ms) for d in digests]
            values = [value for _, value in found]
            for i, (c, value) in enumerate(zip(charges, values, strict=True)):
                if c.amount > 0 and value + c.amount > c.limit:
                    return Charged(i, values)
            for c, d, value in zip(charges, digests, values, strict=True):
                slot, _ = self._find(d, now_ms)  # again: an earlier write may have taken a free slot
                self._write(slot, d, now_ms + int(c.ttl * 1000) + 1000, value + c.amount)
            return Charged(None, [v + c.amount for v, c in zip(values, charges, strict=True)])

    def adjust_now(self, deltas: Sequence[tuple[str, int, float]]) -> None:
        now_ms = int(time.time() * 1000)
        with self._locked_fd():
            for key, delta, ttl in deltas:
                digest = _digest(key)
                slot, value = self._find(digest, now_ms)
                if value == 0 and delta <= 0:
                    continue  # the window ended meanwhile: nothing to give back
                self._write(slot, digest, now_ms + int(ttl * 1000) + 1000, max(0, value + delta))

    def read_now(self, keys: Sequence[str]) -> list[int]:
        now_ms = int(time.time() * 1000)
        with self._locked_fd():
            return [self._find(_digest(key), now_ms)[1] for key in keys]

    async def charge(self, charges: Sequence[Charge]) -> Charged:
        return self.charge_now(charges)

    async def adjust(self, deltas: Sequence[tuple[str, int, float]]) -> None:
        self.adjust_now(deltas)

    async def read(self, keys: Sequence[str]) -> list[int]:
        return self.read_now(keys)

    async def close(self) -> None:
        self._map.close()
        os.close(self._fd)


_: Counters = LocalCounters.__new__(LocalCounters)
