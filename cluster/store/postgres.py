"""PostgreSQL store: several nodes share one database; the revision column is the truth, NOTIFY the wake-up.

    commit ─▶ one transaction: UPDATE wardgate_meta revision += len(ops) (row lock: commits take turns, so
              revisions become visible in order and a reader never skips one committed later with a lower
              number) ─▶ check and write each op (resources + events) ─▶ pg_notify(CHANNEL, revision) ─▶ COMMIT
    watch  ─▶ LISTEN on its own connection *before* reading events > last seen ─▶ yield them ─▶ sleep until a
              notification (or POLL_INTERVAL, the safety net) ─▶ read again
    database gone ─▶ reads and writes raise Unavailable (HTTP 503); a watcher keeps its last revision, retries
              with backoff, listens again and reads everything after it: no event is lost

Secrets are sealed with the store key as in SQLite (store/codec.py); so are the cluster files (CA, signing
key, shared settings) that `wardgate-cluster init --store postgresql://…` puts in `wardgate_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from cryptography.exceptions import InvalidTag

from wardgate.cluster.errors import Invalid, NotFound, Unavailable
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Compacted, Event, EventType, Op, Store, codec
from wardgate.cluster.store.ops import apply_op, key_of
from wardgate.cluster.store.pg_schema import CHANNEL, migrate
from wardgate.cluster.store.sealing import Sealer

if TYPE_CHECKING:
    from wardgate.cluster.store.pg_schema import Connection

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEP_EVENTS = 10_000
POLL_INTERVAL = 0.5
"""Seconds between reads when no notification comes (a lost listener connection is noticed by then)."""
_BATCH = 1000
DOWN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What a lost or restarting database raises (InternalClientError: a pooled connection that a query cut off by
the outage left mid-operation; `pooled` terminates it)."""


async def pooled(pool: asyncpg.Pool, fn: Callable[[Connection], Awaitable[T]]) -> T:
    """`fn` on a connection of the pool; one that asyncpg finds mid-operation is terminated, never reused."""
    async with pool.acquire() as conn:
        try:
            return await fn(conn)
        except asyncpg.InternalClientError:
            conn.terminate()
            raise


def describe(dsn: str) -> str:
    """`host:port/database` of a DSN, without the user or password (for messages and logs)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


class PostgresStore:
    """The Store for several nodes (see the module docstring). Make one with `await PostgresStore.open(...)`."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, sealer: Sealer | None) -> None:
        self._dsn = dsn
        self.where = describe(dsn)
        self._pool = pool
        self._sealer = sealer
        self._wakeups: set[asyncio.Event] = set()
        self._listener: asyncpg.Connection | None = None
        self._listener_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, sealer: Sealer | None, *, pool_size: int = 4, connect_timeout: float = 5.0
    ) -> PostgresStore:
        """Connect, apply the schema migrations, and return the store; Unavailable when the database is not there."""
        if not is_postgres_url(dsn):
            raise Invalid(f"{dsn!r} is not a postgresql:// URL")
        try:
            # min_size 0: no background task reconnecting (and logging tracebacks) while the database is down.
            pool = await asyncpg.create_pool(
                dsn, min_size=0, max_size=pool_size, timeout=connect_timeout, command_timeout=30
            )
        except DOWN as exc:
            raise Unavailable(f"the PostgreSQL store at {describe(dsn)} is unreachable: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except DOWN as exc:
            await pool.close()
            raise Unavailable(f"the PostgreSQL store at {describe(dsn)} is unreachable: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        return cls(dsn, pool, sealer)

    async def _run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            return await pooled(self._pool, fn)
        except DOWN as exc:
            raise Unavailable(f"the PostgreSQL store at {self.where} is unavailable: {_reason(exc)}") from exc

    def _decode(self, kind: str, name: str, sealed: bool, body: bytes) -> AnyResource:
        return codec.decode(kind, name, sealed, body, self._sealer)

    async def get(self, kind: str, name: str) -> AnyResource:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT sealed, body FROM wardgate_resources WHERE kind = $1 AND name = $2", kind, name
            )
        )
        if row is None:
            raise NotFound(f"{kind.lower()}/{name} not found")
        return self._decode(kind, name, row["sealed"], row["body"])

    async def list_kind(self, kind: str) -> list[AnyResource]:
        rows = await self._run(
            lambda c: c.fetch("SELECT name, sealed, body FROM wardgate_resources WHERE kind = $1 ORDER BY name", kind)
        )
        return [self._decode(kind, r["name"], r["sealed"], r["body"]) for r in rows]

    async def revision(self) -> int:
        value: int = await self._run(lambda c: c.fetchval("SELECT value FROM wardgate_meta WHERE key = 'revision'"))
        return value

    async def snapshot(self) -> tuple[int, list[AnyResource]]:
        async def read(conn: Connection) -> tuple[int, list[Any]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                revision = await conn.fetchval("SELECT value FROM wardgate_meta WHERE key = 'revision'")
                rows = await conn.fetch("SELECT kind, name, sealed, body FROM wardgate_resources")
            return revision, rows

        revision, rows = await self._run(read)
        return revision, [self._decode(r["kind"], r["name"], r["sealed"], r["body"]) for r in rows]

    async def _write(
        self, conn: Connection, revision: int, op: Op, result: AnyResource | None, previous: AnyResource | None
    ) -> None:
        kind, name = key_of(op)
        if result is None:
            assert previous is not None
            sealed, body = codec.encode(previous, self._sealer)
            await conn.execute("DELETE FROM wardgate_resources WHERE kind = $1 AND name = $2", kind, name)
            event_type = EventType.DELETE
        else:
            sealed, body = codec.encode(result, self._sealer)
            await conn.execute(
                "INSERT INTO wardgate_resources (kind, name, revision, sealed, body) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (kind, name) DO UPDATE SET revision = $3, sealed = $4, body = $5",
                kind,
                name,
                revision,
                sealed,
                body,
            )
            event_type = EventType.PUT
        await conn.execute(
            "INSERT INTO wardgate_events (revision, type, kind, name, sealed, body) VALUES ($1, $2, $3, $4, $5, $6)",
            revision,
            event_type.value,
            kind,
            name,
            sealed,
            body,
        )

    async def _commit(self, conn: Connection, ops: Sequence[Op]) -> list[AnyResource | None]:
        async with conn.transaction():
            last: int = await conn.fetchval(
                "UPDATE wardgate_meta SET value = value + $1 WHERE key = 'revision' RETURNING value", len(ops)
            )
            revision = last - len(ops)
            results: list[AnyResource | None] = []
            for op in ops:
                revision += 1
                kind, name = key_of(op)
                row = await conn.fetchrow(
                    "SELECT sealed, body FROM wardgate_resources WHERE kind = $1 AND name = $2", kind, name
                )
                previous = None if row is None else self._decode(kind, name, row["sealed"], row["body"])
                result = apply_op(op, previous, revision)
                await self._write(conn, revision, op, result, previous)
                results.append(result)
            floor = last - KEEP_EVENTS
            compacted: int = await conn.fetchval("SELECT value FROM wardgate_meta WHERE key = 'compacted'")
            if floor > compacted + KEEP_EVENTS // 10:
                await conn.execute("DELETE FROM wardgate_events WHERE revision <= $1", floor)
                await conn.execute("UPDATE wardgate_meta SET value = $1 WHERE key = 'compacted'", floor)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(last))
        return results

    async def commit(self, ops: Sequence[Op]) -> list[AnyResource | None]:
        if not ops:
            return []
        return await self._run(lambda c: self._commit(c, ops))

    async def _events_after(self, after: int) -> list[Event]:
        async def read(conn: Connection) -> tuple[int, list[Any]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                compacted = await conn.fetchval("SELECT value FROM wardgate_meta WHERE key = 'compacted'")
                rows = await conn.fetch(
                    "SELECT revision, type, kind, name, sealed, body FROM wardgate_events WHERE revision > $1 "
                    "ORDER BY revision LIMIT $2",
                    after,
                    _BATCH,
                )
            return compacted, rows

        compacted, rows = await self._run(read)
        if after < compacted:
            raise Compacted(f"revision {after} is compacted (oldest kept: {compacted + 1})")
        return [
            Event(r["revision"], EventType(r["type"]), self._decode(r["kind"], r["name"], r["sealed"], r["body"]))
            for r in rows
        ]

    def poke(self) -> None:
        """Read the feed now (a worker of this node says it committed), not at the next notification or tick."""
        for wakeup in self._wakeups:
            wakeup.set()

    def _notified(self, *_: object) -> None:
        self.poke()

    def _lost(self, *_: object) -> None:
        self._listener = None
        self.poke()

    async def _listen(self) -> None:
        """Make sure this store LISTENs (one connection for all its watchers); reconnect after a loss."""
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
            except DOWN as exc:
                raise Unavailable(f"cannot listen on {self.where}: {_reason(exc)}") from exc
            try:
                await conn.add_listener(CHANNEL, self._notified)
            except DOWN as exc:
                await conn.close(timeout=1)
                raise Unavailable(f"cannot listen on {self.where}: {_reason(exc)}") from exc
            conn.add_termination_listener(self._lost)
            self._listener = conn

    async def watch(self, after: int) -> AsyncIterator[Event]:
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        failures = 0
        try:
            while True:
                wakeup.clear()
                try:
                    await self._listen()
                    events = await self._events_after(after)
                except Unavailable as exc:
                    failures += 1
                    if failures == 1:
                        log.warning("change feed interrupted after revision %d: %s; retrying", after, exc)
                    await asyncio.sleep(min(0.05 * 2**failures, 1.0))
                    continue
                if failures:
                    log.info("change feed resumed after revision %d (%d failed attempts)", after, failures)
                    failures = 0
                for event in events:
                    yield event
                    after = event.revision
                if len(events) < _BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), POLL_INTERVAL)
        finally:
            self._wakeups.discard(wakeup)

    async def ping(self) -> int:
        """The store's revision, or Unavailable (readiness)."""
        return await self.revision()

    async def put_cluster_files(self, files: Mapping[str, bytes]) -> None:
        """Store the cluster's files (sealed); Invalid if the database already holds a cluster."""
        sealer = self._require_sealer()

        async def write(conn: Connection) -> None:
            async with conn.transaction():
                if await conn.fetchval("SELECT count(*) FROM wardgate_cluster"):
                    raise Invalid(f"the database at {self.where} already holds a Wardgate cluster: join it instead")
                for name, body in files.items():
                    await conn.execute(
                        "INSERT INTO wardgate_cluster (name, body) VALUES ($1, $2)",
                        name,
                        sealer.seal(body, f"cluster/{name}".encode()),
                    )

        await self._run(write)

    async def cluster_files(self) -> dict[str, bytes]:
        """The cluster's files, opened with the store key (Invalid: a wrong key, or no cluster here)."""
        sealer = self._require_sealer()
        rows = await self._run(lambda c: c.fetch("SELECT name, body FROM wardgate_cluster"))
        if not rows:
            raise Invalid(f"the database at {self.where} holds no Wardgate cluster: run `wardgate-cluster init` first")
        try:
            return {r["name"]: sealer.open(r["body"], f"cluster/{r['name']}".encode()) for r in rows}
        except (InvalidTag, ValueError) as exc:
            raise Invalid(f"the store key does not open the cluster at {self.where}: wrong --store-key-file") from exc

    def _require_sealer(self) -> Sealer:
        if self._sealer is None:
            raise Unavailable("the store has no key to seal the cluster's files")
        return self._sealer

    async def close(self) -> None:
        async with self._listener_lock:
            if self._listener is not None:
                with contextlib.suppress(*DOWN):
                    await self._listener.close(timeout=2)
                self._listener = None
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except (*DOWN, TimeoutError):
            self._pool.terminate()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
        return f"connection failed ({text})"
    return text


_: Store = PostgresStore.__new__(PostgresStore)
