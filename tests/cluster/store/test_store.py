"""The Store contract, run against both implementations, plus SQLite's durability and failure modes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import make_secret, make_service, make_user
from tests.postgres_server import PostgresServer
from wardgate.cluster.errors import Conflict, NotFound, Unavailable
from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.store import Compacted, Create, Delete, Event, EventType, Store, create, delete, update
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.postgres import PostgresStore
from wardgate.cluster.store.sealing import Sealer
from wardgate.cluster.store.sqlite import SQLiteStore

KEY = bytes(range(32))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "s.db", Sealer(KEY))
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        s = await PostgresStore.open(server.create_database(), Sealer(KEY))
    yield s
    await s.close()


async def test_create_get_list_and_metadata(store: Store) -> None:
    stored = await create(store, make_service("a"))
    assert stored.metadata.resource_version == "1"
    assert stored.metadata.uid and stored.metadata.created_at == stored.metadata.updated_at
    await create(store, make_service("b"))
    assert [r.metadata.name for r in await store.list_kind("Service")] == ["a", "b"]
    assert (await store.get("Service", "a")).metadata.uid == stored.metadata.uid
    with pytest.raises(NotFound):
        await store.get("Service", "zzz")
    with pytest.raises(Conflict, match="already exists"):
        await create(store, make_service("a"))


async def test_update_is_optimistic(store: Store) -> None:
    first = await create(store, make_service("a"))
    second = await update(
        store,
        make_service("a", url="http://127.0.0.1:10").with_metadata(
            resource_version=first.metadata.resource_version
        ),
    )
    assert second.metadata.resource_version == "2"
    assert second.metadata.uid == first.metadata.uid
    assert second.metadata.created_at == first.metadata.created_at
    stale = make_service("a", url="http://127.0.0.1:11").with_metadata(resource_version="1")
    with pytest.raises(Conflict, match="changed since it was read"):
        await update(store, stale)
    assert (await store.get("Service", "a")).metadata.resource_version == "2"
    with pytest.raises(NotFound):
        await update(store, make_service("nope"))


async def test_commit_is_all_or_nothing(store: Store) -> None:
    await create(store, make_service("exists"))
    with pytest.raises(Conflict):
        await store.commit(
            [Create(make_service("new1")), Create(make_service("exists")), Create(make_service("new2"))]
        )
    assert [r.metadata.name for r in await store.list_kind("Service")] == ["exists"]
    revision, _ = await store.snapshot()
    assert revision == 1


async def test_delete_with_version(store: Store) -> None:
    stored = await create(store, make_user("bob"))
    with pytest.raises(Conflict):
        await delete(store, "User", "bob", resource_version="999")
    await delete(store, "User", "bob", resource_version=stored.metadata.resource_version)
    with pytest.raises(NotFound):
        await delete(store, "User", "bob")


async def test_watch_replays_and_follows(store: Store) -> None:
    await create(store, make_service("a"))
    seen: list[tuple[int, EventType, str]] = []

    async def consume() -> None:
        async for event in store.watch(0):
            seen.append((event.revision, event.type, event.resource.metadata.name))
            if len(seen) == 3:
                return

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.05)
    await create(store, make_service("b"))
    await store.commit([Delete("Service", "a")])
    await asyncio.wait_for(task, 5)
    assert seen == [(1, EventType.PUT, "a"), (2, EventType.PUT, "b"), (3, EventType.DELETE, "a")]


async def test_secret_roundtrip_keeps_value(store: Store) -> None:
    await create(store, make_secret("k", "hunter2-very-secret"))
    stored = await store.get("Secret", "k")
    assert isinstance(stored, Secret)
    assert stored.spec.reveal() == {"value": "hunter2-very-secret"}
    assert "hunter2" not in repr(stored) and "hunter2" not in stored.model_dump_json()


async def test_sqlite_encrypts_secrets_at_rest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", Sealer(KEY))
    await create(store, make_secret("k", "plaintext-canary-4711"))
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db"))
    assert b"plaintext-canary-4711" not in raw
    reopened = SQLiteStore(tmp_path / "s.db", Sealer(KEY))
    assert (await reopened.get("Secret", "k")).spec.reveal() == {"value": "plaintext-canary-4711"}  # type: ignore[union-attr]
    await reopened.close()
    wrong = SQLiteStore(tmp_path / "s.db", Sealer(bytes(32)))
    with pytest.raises(Unavailable, match="wrong store key"):
        await wrong.get("Secret", "k")
    await wrong.close()


async def test_sqlite_persists_and_continues_revisions(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", Sealer(KEY))
    await create(store, make_service("a"))
    await store.close()
    store = SQLiteStore(tmp_path / "s.db", Sealer(KEY))
    stored = await create(store, make_service("b"))
    assert stored.metadata.resource_version == "2"
    events = []
    async for event in store.watch(0):
        events.append(event.resource.metadata.name)
        if len(events) == 2:
            break
    assert events == ["a", "b"]
    await store.close()


async def test_memory_watch_compaction() -> None:
    store = MemoryStore(keep_events=2)
    for name in "abcd":
        await create(store, make_service(name))
    with pytest.raises(Compacted):
        async for _ in store.watch(0):
            pass


def test_corrupt_database_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Unavailable, match="not a usable Wardgate store"):
        SQLiteStore(path, Sealer(KEY))


async def test_locked_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, Sealer(KEY), busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable, match="locked by another process"):
            await create(store, make_service("a"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await create(store, make_service("a"))
    await store.close()


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from wardgate.cluster.errors import Conflict
    from wardgate.cluster.store import Update
    from wardgate.cluster.store.sealing import Sealer
    from wardgate.cluster.store.sqlite import SQLiteStore
    from tests.factories import make_service

    async def main():
        store = SQLiteStore(sys.argv[1], Sealer(bytes(range(32))), busy_timeout=10)
        wins = 0
        for i in range(int(sys.argv[3])):
            while True:
                current = await store.get("Service", "shared")
                port = int(current.spec.config.upstream.url.rsplit(":", 1)[1]) + 1
                changed = make_service("shared", url=f"http://127.0.0.1:{port}").with_metadata(
                    resource_version=current.metadata.resource_version)
                try:
                    await store.commit([Update(changed)])
                    wins += 1
                    break
                except Conflict:
                    continue
        print(wins)
        await store.close()

    asyncio.run(main())
    """
)


async def test_concurrent_writers_in_two_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, Sealer(KEY))
    await create(store, make_service("shared", url="http://127.0.0.1:1000"))
    rounds = 40
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WRITER,
            str(path),
            str(n),
            str(rounds),
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[3],
        )
        for n in range(2)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(int(out.decode()) for out, _ in outputs) == 2 * rounds
    final = await store.get("Service", "shared")
    assert final.spec.config.upstream.url == f"http://127.0.0.1:{1000 + 2 * rounds}"  # type: ignore[union-attr]
    await store.close()


_CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from wardgate.cluster.store import Create
    from wardgate.cluster.store.sealing import Sealer
    from wardgate.cluster.store.sqlite import SQLiteStore
    from tests.factories import make_service

    writes = 0
    original = SQLiteStore._write_row

    def crashing(self, *args):
        global writes
        original(self, *args)
        writes += 1
        if writes == 3:
            os._exit(17)

    SQLiteStore._write_row = crashing

    async def main():
        store = SQLiteStore(sys.argv[1], Sealer(bytes(range(32))))
        await store.commit([Create(make_service(f"s{i}")) for i in range(5)])

    asyncio.run(main())
    """
)


async def test_crash_mid_commit_leaves_nothing_half_applied(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, Sealer(KEY))
    await create(store, make_service("before"))
    await store.close()
    result = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(path)], cwd=Path(__file__).resolve().parents[3], timeout=60
    )
    assert result.returncode == 17
    store = SQLiteStore(path, Sealer(KEY))
    assert [r.metadata.name for r in await store.list_kind("Service")] == ["before"]
    assert (await store.snapshot())[0] == 1
    assert (await create(store, make_service("after"))).metadata.resource_version == "2"
    await store.close()
    assert os.path.exists(path)


class _FlakyFeed(MemoryStore):
    """A store whose change feed fails once with an error no store is meant to raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def watch(self, after: int) -> AsyncIterator[Event]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a driver fault")
        async for event in super().watch(after):
            yield event


async def test_the_cache_keeps_following_after_an_unexpected_feed_error() -> None:
    # A store fault (asyncpg's protocol state error, seen in CI) once ended the follower task, and with it the
    # node's task group: the whole node went down. The follower logs it and follows again.
    store = _FlakyFeed()
    cache = ResourceCache(store)
    await cache.load()
    follower = asyncio.get_running_loop().create_task(cache.follow())
    try:
        await store.commit([Create(make_user("after-the-fault"))])
        async with asyncio.timeout(5):
            await cache.wait_for(await store.revision())
        assert store.failed and not follower.done()
    finally:
        follower.cancel()
