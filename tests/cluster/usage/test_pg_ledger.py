"""The usage ledger on a real PostgreSQL: the same answers as SQLite's for the same rows, a retried batch counted
once, pruning; and the LedgerWriter: batches off the request path, rows kept while the database is away and all
written once it is back, a bounded queue whose overflow is counted, and a broken batch that cannot wedge it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import PostgresServer
from wardgate.cluster.errors import Unavailable
from wardgate.cluster.store.postgres import PostgresStore
from wardgate.cluster.store.sealing import Sealer
from wardgate.cluster.usage.ledger import HistoryRow, InThread, LedgerRow, SQLiteLedger
from wardgate.cluster.usage.ledger_writer import LedgerWriter
from wardgate.cluster.usage.pg_ledger import PostgresLedger

NOW = time.time()


def row(user: str, groups: tuple[str, ...] = (), model: str = "m", tokens: int = 10, at: float = NOW) -> LedgerRow:
    return LedgerRow(at, user, groups, "cred", None, "llm", None, model, tokens, tokens // 2, 1, 0, tokens / 100,
                     tokens % 2 == 1, 200, None)  # fmt: skip


ROWS = [
    row("alice", ("dev", "ops"), "m1", 11),
    row("alice", ("dev", "ops"), "m2", 20),
    row("bob", ("dev",), "m1", 7),
    row("carol", (), "m2", 3, at=NOW - 7200),
]


async def _migrated(dsn: str) -> None:
    store = await PostgresStore.open(dsn, Sealer(bytes(32)))
    await store.close()


@pytest.fixture
async def ledger(postgres: PostgresServer) -> AsyncIterator[PostgresLedger]:
    dsn = postgres.create_database()
    await _migrated(dsn)
    opened = await PostgresLedger.open(dsn)
    yield opened
    await opened.close()


async def test_answers_as_the_sqlite_ledger_does(ledger: PostgresLedger, tmp_path: Path) -> None:
    sqlite = InThread(SQLiteLedger(tmp_path / "usage.db"))
    for target in (ledger, sqlite):
        await target.write(uuid.uuid4(), ROWS)
    for by in ("user", "group", "model", "service", "credential", "session", "config"):
        for since in (NOW - 3600, NOW - 86400):
            assert await ledger.summary(by, since) == await sqlite.summary(by, since), (by, since)
            assert await ledger.keys(by, since, None) == await sqlite.keys(by, since, None)
    assert await ledger.keys("user", NOW - 3600, ["llm"]) == ["alice", "bob"]
    assert await ledger.keys("user", NOW - 3600, ["other"]) == []
    for user in (None, "alice"):
        mine = sorted(await ledger.history(NOW - 86400, 3600, user), key=repr)
        assert mine == sorted(await sqlite.history(NOW - 86400, 3600, user), key=repr) and mine
    # Plain ints and floats, as JSON carries them (a PostgreSQL sum of bigints is a numeric: Decimal).
    for by in ("user", "group"):
        for entry in await ledger.summary(by, 0):
            assert {type(v) for k, v in entry.items() if k != "key"} <= {int, float}, entry
            json.dumps(entry)
    for h in await ledger.history(0, 3600):
        assert type(h.input_tokens) is int and type(h.output_tokens) is int and type(h.cost) is float, h
    by_group = {e["key"]: e for e in await ledger.summary("group", NOW - 3600)}
    assert by_group["dev"]["requests"] == 3 and by_group["ops"]["inputTokens"] == 31
    assert by_group["dev"]["estimated"] == 2 and "-" not in by_group
    await sqlite.close()


async def test_sqlite_errors_are_unavailable_so_the_writer_keeps_the_rows(tmp_path: Path) -> None:
    sqlite = SQLiteLedger(tmp_path / "usage.db")
    sqlite.close()
    writer = LedgerWriter(InThread(sqlite))
    writer.add(row("kept"))
    assert not await writer.flush()
    assert writer.pending == 1 and writer.failures == 1 and writer.dropped == 0
    with pytest.raises(Unavailable, match=r"usage\.db: usage ledger"):
        await InThread(sqlite).summary("user", 0)


async def test_a_retried_batch_counts_once_and_prune_keeps_the_recent(ledger: PostgresLedger) -> None:
    batch = uuid.uuid4()
    await ledger.write(batch, ROWS)
    await ledger.write(batch, ROWS)  # the acknowledgement was lost: the writer sends the same batch again
    await ledger.write(uuid.uuid4(), ROWS[:1])
    users = {e["key"]: e["requests"] for e in await ledger.summary("user", 0)}
    assert users == {"alice": 3, "bob": 1, "carol": 1}
    assert await ledger.prune(NOW - 3600) == 1
    assert {e["key"] for e in await ledger.summary("user", 0)} == {"alice", "bob"}


async def test_the_writer_prunes_past_the_retention(ledger: PostgresLedger) -> None:
    writer = LedgerWriter(ledger, retention=3600, interval=0.02)
    writer.add(row("old", at=NOW - 7200))
    writer.add(row("recent", at=NOW - 60))
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        await _until(lambda: writer.pending == 0)
        await asyncio.sleep(0.2)  # the first round after a successful flush prunes
        assert await _users(ledger) == {"recent": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own: the test stops it."""
    server = PostgresServer()
    server.start()
    yield server
    server.close()


async def _users(ledger: PostgresLedger) -> dict[str, int]:
    return {e["key"]: e["requests"] for e in await ledger.summary("user", 0)}


async def test_the_writer_keeps_rows_while_postgres_is_down_and_writes_them_all_after(
    own_postgres: PostgresServer,
) -> None:
    dsn = own_postgres.create_database()
    await _migrated(dsn)
    ledger = await PostgresLedger.open(dsn, connect_timeout=1)
    failures: list[tuple[str, int]] = []
    writer = LedgerWriter(ledger, interval=0.05, batch=50, on_failure=lambda kind, n: failures.append((kind, n)))
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        for _ in range(30):
            writer.add(row("before"))
        await _until(lambda: writer.pending == 0)
        await asyncio.to_thread(own_postgres.stop)
        started = time.perf_counter()
        for _ in range(120):  # while it is down: add() never waits, the rows wait in the queue
            writer.add(row("during"))
        assert time.perf_counter() - started < 0.05
        await _until(lambda: writer.failures >= 2)
        assert writer.pending == 120 and writer.dropped == 0 and ("write", 1) in failures
        await asyncio.to_thread(own_postgres.start)
        await _until(lambda: writer.pending == 0, within=30)
        assert await _users(ledger) == {"before": 30, "during": 120}
        assert not [f for f in failures if f[0] == "dropped"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ledger.close()


class _Refusing:
    """A Ledger that is away (Unavailable), or broken in a way a retry cannot mend (ValueError)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.written: list[LedgerRow] = []

    async def write(self, batch: uuid.UUID, rows: Sequence[LedgerRow]) -> None:
        if self.error is not None:
            raise self.error
        self.written.extend(rows)

    async def prune(self, before: float) -> int:
        return 0

    async def summary(self, by: str, since: float) -> list[dict[str, Any]]:
        return []

    async def keys(self, by: str, since: float, services: Sequence[str] | None) -> list[str]:
        return []

    async def history(self, since: float, bucket: float, user: str | None = None) -> list[HistoryRow]:
        return []

    async def close(self) -> None:
        return None


async def test_the_queue_is_bounded_and_its_overflow_counted() -> None:
    away = _Refusing(Unavailable("the usage ledger at db:5432/x is unavailable: connection refused"))
    counted: list[tuple[str, int]] = []
    writer = LedgerWriter(away, limit=100, batch=30, on_failure=lambda kind, n: counted.append((kind, n)))
    for i in range(130):
        writer.add(row(f"u{i}"))
    assert not await writer.flush()
    assert writer.pending == 100 and writer.dropped == 30 and counted.count(("dropped", 1)) == 30
    away.error = None
    assert await writer.flush()
    assert [r.user for r in away.written] == [f"u{i}" for i in range(100)]  # in order, none twice


async def test_a_batch_that_cannot_be_written_is_dropped_not_retried_forever() -> None:
    broken = _Refusing(ValueError("a value the database refuses"))
    writer = LedgerWriter(broken, batch=10)
    for i in range(15):
        writer.add(row(f"u{i}"))
    assert await writer.flush()
    assert writer.pending == 0 and writer.dropped == 15 and writer.failures == 2
    broken.error = None
    writer.add(row("next"))
    assert await writer.flush() and [r.user for r in broken.written] == ["next"]


class _Slow(_Refusing):
    """A Ledger whose every write takes a while, during which the request path keeps adding rows."""

    def __init__(self, writer_rows: Callable[[], None]) -> None:
        super().__init__(None)
        self.batches: list[int] = []
        self._during = writer_rows

    async def write(self, batch: uuid.UUID, rows: Sequence[LedgerRow]) -> None:
        self._during()
        await asyncio.sleep(0.01)
        self.batches.append(len(rows))
        self.written.extend(rows)


async def test_rows_added_while_a_batch_is_written_wait_for_the_next_tick() -> None:
    """Chasing them made a loaded writer a stream of small commits, a CPU cost on every request."""
    added = iter(range(10_000))
    writer: LedgerWriter

    def more() -> None:
        if len(slow.batches) < 5:  # then the traffic stops
            for _ in range(5):
                writer.add(row(f"late{next(added)}"))

    slow = _Slow(more)
    writer = LedgerWriter(slow, batch=10, interval=0.05)
    for i in range(25):
        writer.add(row(f"u{i}"))
    assert await writer.flush()
    assert slow.batches == [10, 10, 10]  # as many rows as were queued when it began, in full batches
    assert writer.pending == 10  # 25 + 3 * 5 late ones - 30: the rest wait for the next tick
    async with asyncio.TaskGroup() as group:
        task = group.create_task(writer.run())
        await _until(lambda: len(slow.batches) >= 5)
        task.cancel()
    assert writer.pending == 0  # the last flush at shutdown writes everything, late rows included
    assert len(slow.written) == len({r.user for r in slow.written})  # none twice


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
