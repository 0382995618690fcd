"""The usage ledger in the cluster's PostgreSQL database: every node's workers write their batches into one
table (`wardgate_usage`, migration 2 of store/pg_schema.py), so the usage read through any node is the
whole cluster's.

    LedgerWriter (each worker, off the request path) ─▶ write(batch, rows): one INSERT … SELECT unnest(…)
        ON CONFLICT DO NOTHING (a batch retried after a lost acknowledgement counts once)
    admin API, console ─▶ summary / keys / history: grouped in the database, shaped as SQLite's (ledger.py;
        sums cast back to bigint: PostgreSQL's sum of a bigint is a numeric, which JSON cannot carry)

Its own small pool (never the store's: a slow ledger query must not hold up the change feed or an apply),
made without connecting, so a node starts while the database is down; the writer retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from wardgate.cluster.errors import Invalid, Unavailable
from wardgate.cluster.store.postgres import DOWN, describe, is_postgres_url, pooled
from wardgate.cluster.usage.ledger import BY, HistoryRow, Ledger, LedgerRow, distinct_keys, history_rows, summarise

T = TypeVar("T")

_COLUMN = {"user": '"user"', "group": "groups"}
"""`by` -> column, where they differ (`user` is a reserved word in PostgreSQL)."""

_INSERT = """
INSERT INTO wardgate_usage (batch, seq, ts, "user", groups, credential, session, service, config, model,
    input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost, estimated, status, request_id)
SELECT $1::uuid, * FROM unnest($2::int[], $3::float8[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::float8[],
    $16::bool[], $17::int4[], $18::text[])
ON CONFLICT (batch, seq) DO NOTHING
"""


def _columns(rows: Sequence[LedgerRow]) -> list[list[Any]]:
    """The rows as one list per column, in _INSERT's order after the batch id."""
    return [
        list(range(len(rows))),
        [r.time for r in rows],
        [r.user for r in rows],
        ["," + ",".join(r.groups) + "," for r in rows],
        [r.credential for r in rows],
        [r.session for r in rows],
        [r.service for r in rows],
        [r.config for r in rows],
        [r.model for r in rows],
        [r.input_tokens for r in rows],
        [r.output_tokens for r in rows],
        [r.cached_tokens for r in rows],
        [r.reasoning_tokens for r in rows],
        [r.cost for r in rows],
        [r.estimated for r in rows],
        [r.status for r in rows],
        [r.request_id for r in rows],
    ]


class PostgresLedger:
    """The Ledger of a cluster on PostgreSQL (see the module docstring). `await PostgresLedger.open(dsn)`."""

    def __init__(self, pool: asyncpg.Pool, where: str) -> None:
        self._pool = pool
        self.where = where

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 2, connect_timeout: float = 5.0) -> PostgresLedger:
        """The table is the store's migration 2: open the PostgresStore first (it migrates)."""
        if not is_postgres_url(dsn):
            raise Invalid(f"usage ledger: {dsn!r} is not a postgresql:// URL")
        pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=pool_size, timeout=connect_timeout, command_timeout=30
        )
        return cls(pool, describe(dsn))

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        try:
            return await pooled(self._pool, fn)
        except DOWN as exc:
            raise Unavailable(f"the usage ledger at {self.where} is unavailable: {exc or type(exc).__name__}") from exc

    async def write(self, batch: uuid.UUID, rows: Sequence[LedgerRow]) -> None:
        if rows:
            await self._run(lambda c: c.execute(_INSERT, batch, *_columns(rows)))

    async def prune(self, before: float) -> int:
        status: str = await self._run(lambda c: c.execute("DELETE FROM wardgate_usage WHERE ts < $1", before))
        return int(status.rpartition(" ")[2])

    async def summary(self, by: str, since: float) -> list[dict[str, Any]]:
        if by not in BY:
            raise Invalid(f"by must be one of {', '.join(BY)}")
        column = _COLUMN.get(by, by)
        rows = await self._run(
            lambda c: c.fetch(
                f"SELECT {column}, count(*), sum(input_tokens)::bigint, sum(output_tokens)::bigint, "
                "sum(cached_tokens)::bigint, sum(cost), count(*) FILTER (WHERE estimated) FROM wardgate_usage "
                f"WHERE ts >= $1 GROUP BY {column}",
                since,
            )
        )
        return summarise(by, rows)

    async def keys(self, by: str, since: float, services: Sequence[str] | None) -> list[str]:
        if by not in BY:
            raise Invalid(f"by must be one of {', '.join(BY)}")
        column = _COLUMN.get(by, by)
        query = f"SELECT DISTINCT {column} FROM wardgate_usage WHERE ts >= $1"
        args: list[object] = [since]
        if services is not None:
            query += " AND service = ANY($2::text[])"
            args.append(list(services))
        rows = await self._run(lambda c: c.fetch(query + " LIMIT 10000", *args))
        return distinct_keys(by, (r[0] for r in rows))

    async def history(self, since: float, bucket: float, user: str | None = None) -> list[HistoryRow]:
        query = (
            'SELECT floor(ts / $1)::bigint, "user", groups, service, model, count(*), sum(input_tokens)::bigint, '
            "sum(output_tokens)::bigint, sum(cost) FROM wardgate_usage WHERE ts >= $2"
        )
        args: list[object] = [bucket, since]
        if user is not None:
            query += ' AND "user" = $3'
            args.append(user)
        query += ' GROUP BY 1, "user", groups, service, model LIMIT 100000'
        rows = await self._run(lambda c: c.fetch(query, *args))
        return history_rows(rows, bucket)

    async def close(self) -> None:
        try:
            await self._pool.close()
        except DOWN:
            self._pool.terminate()


_: Ledger = PostgresLedger.__new__(PostgresLedger)
