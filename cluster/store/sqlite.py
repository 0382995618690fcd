"""SQLite store: one file in WAL mode, BEGIN IMMEDIATE transactions, a polled change feed.

Writers in other processes are serialised by SQLite's lock (busy timeout, then Unavailable); watchers in
this process wake on local commits and poll for foreign ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from wardgate.cluster.errors import NotFound, Unavailable
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Compacted, Event, EventType, Op, codec
from wardgate.cluster.store.ops import apply_op, key_of
from wardgate.cluster.store.sealing import Sealer

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
    sealed INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, type TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    sealed INTEGER NOT NULL, body BLOB NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
"""

KEEP_EVENTS = 10_000
POLL_INTERVAL = 0.1


class SQLiteStore:
    """The default Store: a single SQLite file (see the module docstring)."""

    def __init__(self, path: Path, sealer: Sealer | None = None, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._sealer = sealer
        self._lock = threading.Lock()
        self._wakeups: set[asyncio.Event] = set()
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise Unavailable(f"{path}: the database is damaged ({check[0] if check else 'no answer'})")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise Unavailable(f"{path}: {_describe(exc)}") from exc

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn()
                except sqlite3.DatabaseError as exc:
                    raise Unavailable(f"{self.path}: {_describe(exc)}") from exc

        return await asyncio.to_thread(locked)

    def _encode(self, resource: AnyResource) -> tuple[int, bytes]:
        sealed, body = codec.encode(resource, self._sealer)
        return int(sealed), body

    def _decode(self, kind: str, name: str, sealed: int, body: bytes) -> AnyResource:
        return codec.decode(kind, name, bool(sealed), body, self._sealer)

    def _current(self, kind: str, name: str) -> AnyResource | None:
        row = self._db.execute(
            "SELECT sealed, body FROM resources WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return None if row is None else self._decode(kind, name, row[0], row[1])

    async def get(self, kind: str, name: str) -> AnyResource:
        found = await self._run(lambda: self._current(kind, name))
        if found is None:
            raise NotFound(f"{kind.lower()}/{name} not found")
        return found

    async def list_kind(self, kind: str) -> list[AnyResource]:
        def read() -> list[AnyResource]:
            rows = self._db.execute(
                "SELECT name, sealed, body FROM resources WHERE kind = ? ORDER BY name", (kind,)
            ).fetchall()
            return [self._decode(kind, n, s, b) for n, s, b in rows]

        return await self._run(read)

    async def revision(self) -> int:
        def read() -> int:
            value: int = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
            return value

        return await self._run(read)

    async def snapshot(self) -> tuple[int, list[AnyResource]]:
        def read() -> tuple[int, list[AnyResource]]:
            self._db.execute("BEGIN")
            try:
                revision = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
                rows = self._db.execute("SELECT kind, name, sealed, body FROM resources").fetchall()
            finally:
                self._db.execute("COMMIT")
            return revision, [self._decode(k, n, s, b) for k, n, s, b in rows]

        return await self._run(read)

    def _write_row(
        self, revision: int, op: Op, result: AnyResource | None, previous: AnyResource | None
    ) -> None:
        kind, name = key_of(op)
        if result is None:
            assert previous is not None
            sealed, body = self._encode(previous)
            self._db.execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))
            event_type = EventType.DELETE
        else:
            sealed, body = self._encode(result)
            self._db.execute(
                "INSERT OR REPLACE INTO resources (kind, name, revision, sealed, body) VALUES (?, ?, ?, ?, ?)",
                (kind, name, revision, sealed, body),
            )
            event_type = EventType.PUT
        self._db.execute(
            "INSERT INTO events (revision, type, kind, name, sealed, body) VALUES (?, ?, ?, ?, ?, ?)",
            (revision, event_type.value, kind, name, sealed, body),
        )

    def _commit(self, ops: Sequence[Op]) -> list[AnyResource | None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            revision = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
            results: list[AnyResource | None] = []
            for op in ops:
                revision += 1
                previous = self._current(*key_of(op))
                result = apply_op(op, previous, revision)
                self._write_row(revision, op, result, previous)
                results.append(result)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
            floor = revision - KEEP_EVENTS
            compacted = self._db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0]
            if floor > compacted + KEEP_EVENTS // 10:
                self._db.execute("DELETE FROM events WHERE revision <= ?", (floor,))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'compacted'", (floor,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return results

    async def commit(self, ops: Sequence[Op]) -> list[AnyResource | None]:
        if not ops:
            return []
        results = await self._run(lambda: self._commit(ops))
        for wakeup in self._wakeups:
            wakeup.set()
        return results

    def _events_after(self, after: int) -> list[Event]:
        compacted = self._db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0]
        if after < compacted:
            raise Compacted(f"revision {after} is compacted (oldest kept: {compacted + 1})")
        rows = self._db.execute(
            "SELECT revision, type, kind, name, sealed, body FROM events WHERE revision > ? "
            "ORDER BY revision LIMIT 1000",
            (after,),
        ).fetchall()
        return [Event(r, EventType(t), self._decode(k, n, s, b)) for r, t, k, n, s, b in rows]

    async def watch(self, after: int) -> AsyncIterator[Event]:
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                wakeup.clear()
                events = await self._run(functools.partial(self._events_after, after))
                for event in events:
                    yield event
                    after = event.revision
                if not events:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), POLL_INTERVAL)
        finally:
            self._wakeups.discard(wakeup)

    def poke(self) -> None:
        """Poll for foreign commits now (another process says it committed), not at the next tick."""
        for wakeup in self._wakeups:
            wakeup.set()

    async def close(self) -> None:
        await self._run(self._db.close)


def _describe(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the database is locked by another process (gave up after the busy timeout)"
    if "not a database" in text or "malformed" in text:
        return f"not a usable Wardgate store: {text}"
    return text
