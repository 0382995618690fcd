"""The PostgreSQL store's schema, as numbered migrations applied at start (under an advisory lock).

A migration is never edited once released: a change is a new, higher number. A node that finds a schema
newer than it knows refuses to start (upgrade it first); an older one is brought forward, so nodes are
upgraded one at a time (docs/deployment.md) as long as each migration keeps the previous release working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from wardgate.cluster.errors import Unavailable

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]

CHANNEL = "wardgate_events"
"""NOTIFY channel: the payload is the last revision of a commit; it only wakes watchers (the table is the truth)."""

_LOCK = 0x77617264  # "ward": one migrator at a time when several nodes start together

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE wardgate_meta (key text PRIMARY KEY, value bigint NOT NULL);
        INSERT INTO wardgate_meta (key, value) VALUES ('revision', 0), ('compacted', 0);
        CREATE TABLE wardgate_resources (
            kind text NOT NULL, name text NOT NULL, revision bigint NOT NULL,
            sealed boolean NOT NULL, body bytea NOT NULL, PRIMARY KEY (kind, name));
        CREATE TABLE wardgate_events (
            revision bigint PRIMARY KEY, type text NOT NULL, kind text NOT NULL, name text NOT NULL,
            sealed boolean NOT NULL, body bytea NOT NULL);
        CREATE TABLE wardgate_cluster (name text PRIMARY KEY, body bytea NOT NULL);
        """,
    ),
    (
        2,
        """
        CREATE TABLE wardgate_usage (
            batch uuid NOT NULL, seq integer NOT NULL, ts double precision NOT NULL, "user" text NOT NULL,
            groups text NOT NULL, credential text, session text, service text NOT NULL, config text, model text,
            input_tokens bigint NOT NULL, output_tokens bigint NOT NULL, cached_tokens bigint NOT NULL,
            reasoning_tokens bigint NOT NULL, cost double precision NOT NULL, estimated boolean NOT NULL,
            status integer NOT NULL, request_id text, PRIMARY KEY (batch, seq));
        CREATE INDEX wardgate_usage_ts ON wardgate_usage (ts);
        """,
    ),
)
"""(version, SQL). `wardgate_meta.revision` is the single-row revision counter: a commit increments it
first, so commits hold its row lock in turn and their revisions become visible in order.

2: the usage ledger of every node (usage/pg_ledger.py). A row's key is its writer's batch id and its place in
the batch, so a batch retried after a lost acknowledgement is not counted twice."""

LATEST = MIGRATIONS[-1][0]


async def migrate(conn: Connection) -> int:
    """Bring the schema to LATEST; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS wardgate_schema "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM wardgate_schema")
        if found > LATEST:
            raise Unavailable(
                f"the database's schema is version {found}, newer than this node knows ({LATEST}): "
                "upgrade this node's wardgate"
            )
        for version, sql in MIGRATIONS:
            if version > found:
                await conn.execute(sql)
                await conn.execute("INSERT INTO wardgate_schema (version) VALUES ($1)", version)
        return found
