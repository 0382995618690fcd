"""The usage ledger: one durable row per proxied LLM call, written in batches off the request path
(ledger_writer.py), read by the admin API (`wardgatectl usage`) and the console, pruned by `[usage] retention`.

SQLiteLedger keeps its table beside the resources, in the store's SQLite file (WAL: the workers of a node
write through their own connections; SQLite's lock serialises their batches); InThread is the async Ledger
over it. With a PostgreSQL store the ledger is PostgresLedger (pg_ledger.py): one table for every node."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from wardgate.cluster.errors import Invalid, Unavailable

T = TypeVar("T")

BY = ("user", "group", "credential", "session", "service", "model", "config")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_records (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, user TEXT NOT NULL, groups TEXT NOT NULL, credential TEXT,
    session TEXT, service TEXT NOT NULL, config TEXT, model TEXT, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    cost REAL NOT NULL, estimated INTEGER NOT NULL, status INTEGER NOT NULL, request_id TEXT);
CREATE INDEX IF NOT EXISTS usage_records_ts ON usage_records (ts);
"""
_COLUMNS = (
    "ts, user, groups, credential, session, service, config, model, input_tokens, output_tokens, cached_tokens, "
    "reasoning_tokens, cost, estimated, status, request_id"
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One LLM call: who, where, which model, how many tokens, what it cost, and whether counted or reported."""

    time: float
    user: str
    groups: tuple[str, ...]
    credential: str | None
    session: str | None
    service: str
    config: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost: float
    estimated: bool
    status: int
    request_id: str | None


class Ledger(Protocol):
    """Where usage rows go and what reads them (see SQLiteLedger for each call's contract).

    `write(batch, rows)` is idempotent per `batch`: the writer retries a batch whose outcome it could not
    learn (a connection lost at COMMIT) under the same id, and its rows must not count twice. Raises
    Unavailable when the database cannot be reached."""

    async def write(self, batch: uuid.UUID, rows: Sequence[LedgerRow]) -> None: ...

    async def prune(self, before: float) -> int: ...

    async def summary(self, by: str, since: float) -> list[dict[str, Any]]: ...

    async def keys(self, by: str, since: float, services: Sequence[str] | None) -> list[str]: ...

    async def history(self, since: float, bucket: float, user: str | None = None) -> list[HistoryRow]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """The calls of one time bucket (its start, in Unix seconds) for one user, group set, Service and model."""

    start: float
    user: str
    groups: tuple[str, ...]
    service: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost: float


def _totals(key: str) -> dict[str, Any]:
    return {"key": key, "requests": 0, "inputTokens": 0, "outputTokens": 0, "cachedTokens": 0, "cost": 0.0,
            "estimated": 0}  # fmt: skip


def _values(r: LedgerRow) -> tuple[object, ...]:
    groups = "," + ",".join(r.groups) + ","
    return (r.time, r.user, groups, r.credential, r.session, r.service, r.config, r.model, r.input_tokens,
            r.output_tokens, r.cached_tokens, r.reasoning_tokens, r.cost, int(r.estimated), r.status,
            r.request_id)  # fmt: skip


INSERT_SIZES = (256, 64, 16, 4, 1)
"""A batch goes in as multi-row INSERTs of these sizes only (largest first): sqlite3 caches a prepared
statement per distinct SQL text, and one per batch length grew the node's memory by tens of MiB."""


@functools.lru_cache(maxsize=len(INSERT_SIZES))
def _insert(rows: int) -> str:
    one = "(" + ", ".join("?" * 16) + ")"
    return f"INSERT INTO usage_records ({_COLUMNS}) VALUES " + ", ".join([one] * rows)


def _chunks(rows: Sequence[LedgerRow]) -> Iterator[Sequence[LedgerRow]]:
    start = 0
    for size in INSERT_SIZES:
        while len(rows) - start >= size:
            yield rows[start : start + size]
            start += size


class SQLiteLedger:
    """The ledger in a SQLite file (see the module docstring)."""

    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise Unavailable(f"{path}: usage ledger: {exc}") from exc

    def write(self, rows: Sequence[LedgerRow]) -> None:
        """Multi-row INSERTs (INSERT_SIZES), not executemany: sqlite3 lets go of the GIL around each statement
        step, and a step per row made this thread and the event loop trade the GIL hundreds of times a
        second under load."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(rows):
                    self._db.execute(_insert(len(chunk)), [v for r in chunk for v in _values(r)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def prune(self, before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM usage_records WHERE ts < ?", (before,)).rowcount

    def summary(self, by: str, since: float) -> list[dict[str, Any]]:
        """Totals per `by` value (a call of a user in two groups counts for both groups), largest cost first."""
        if by not in BY:
            raise Invalid(f"by must be one of {', '.join(BY)}")
        column = "groups" if by == "group" else by
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), "
                f"SUM(cost), SUM(estimated) FROM usage_records WHERE ts >= ? GROUP BY {column}",
                (since,),
            ).fetchall()
        return summarise(by, rows)

    def keys(self, by: str, since: float, services: Sequence[str] | None) -> list[str]:
        """The distinct `by` values of calls since `since` (to some `services`, when given): whose counters
        `get quotas` reads."""
        if by not in BY:
            raise Invalid(f"by must be one of {', '.join(BY)}")
        column = "groups" if by == "group" else by
        query = f"SELECT DISTINCT {column} FROM usage_records WHERE ts >= ?"
        args: list[object] = [since]
        if services is not None:
            query += f" AND service IN ({', '.join('?' * len(services))})"
            args.extend(services)
        with self._lock:
            values = [row[0] for row in self._db.execute(query + " LIMIT 10000", args).fetchall()]
        return distinct_keys(by, values)

    def history(self, since: float, bucket: float, user: str | None = None) -> list[HistoryRow]:
        """Calls since `since` in buckets of `bucket` seconds (aligned to the epoch), per user, group set,
        Service and model; only `user`'s calls when given (the console's charts)."""
        query = (
            "SELECT CAST(ts / ? AS INTEGER), user, groups, service, model, COUNT(*), SUM(input_tokens), "
            "SUM(output_tokens), SUM(cost) FROM usage_records WHERE ts >= ?"
        )
        args: list[object] = [bucket, since]
        if user is not None:
            query += " AND user = ?"
            args.append(user)
        query += " GROUP BY 1, user, groups, service, model LIMIT 100000"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return history_rows(rows, bucket)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def summarise(by: str, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Totals from (key, count, input, output, cached, cost, estimated) rows grouped by the `by` column; a
    group set (`,dev,ops,`) counts for each of its groups. Largest cost first."""
    out: dict[str, dict[str, Any]] = {}
    for value, count, inp, outp, cached, cost, estimated in rows:
        keys = [g for g in str(value).split(",") if g] or ["-"] if by == "group" else [value or "-"]
        for key in keys:
            entry = out.setdefault(key, _totals(key))
            entry["requests"] += count
            entry["inputTokens"] += inp or 0
            entry["outputTokens"] += outp or 0
            entry["cachedTokens"] += cached or 0
            entry["cost"] += cost or 0.0
            entry["estimated"] += estimated or 0
    return sorted(out.values(), key=lambda e: (-e["cost"], -(e["inputTokens"] + e["outputTokens"]), e["key"]))


def distinct_keys(by: str, values: Iterable[object]) -> list[str]:
    if by == "group":
        return sorted({g for v in values for g in str(v).split(",") if g})
    return sorted(str(v) for v in values if v)


def history_rows(rows: Iterable[Sequence[Any]], bucket: float) -> list[HistoryRow]:
    """HistoryRows from (bucket number, user, group set, service, model, count, input, output, cost) rows."""
    return [
        HistoryRow(
            number * bucket,
            name,
            tuple(g for g in str(groups).split(",") if g),
            service,
            model or "-",
            count,
            inp or 0,
            outp or 0,
            cost or 0.0,
        )
        for number, name, groups, service, model, count, inp, outp, cost in rows
    ]


class InThread:
    """The Ledger over a SQLiteLedger: each call in a thread (SQLite blocks), its errors as Unavailable. A local
    commit either happens or raises, so the batch id is not needed for idempotency here."""

    def __init__(self, sqlite: SQLiteLedger) -> None:
        self.sqlite = sqlite

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except sqlite3.Error as exc:
            raise Unavailable(f"{self.sqlite.path}: usage ledger: {exc}") from exc

    async def write(self, batch: uuid.UUID, rows: Sequence[LedgerRow]) -> None:
        await self._call(self.sqlite.write, rows)

    async def prune(self, before: float) -> int:
        return await self._call(self.sqlite.prune, before)

    async def summary(self, by: str, since: float) -> list[dict[str, Any]]:
        return await self._call(self.sqlite.summary, by, since)

    async def keys(self, by: str, since: float, services: Sequence[str] | None) -> list[str]:
        return await self._call(self.sqlite.keys, by, since, services)

    async def history(self, since: float, bucket: float, user: str | None = None) -> list[HistoryRow]:
        return await self._call(self.sqlite.history, since, bucket, user)

    async def close(self) -> None:
        await asyncio.to_thread(self.sqlite.close)


_: Ledger = InThread.__new__(InThread)
