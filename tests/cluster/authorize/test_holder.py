"""StateHolder: rebuilt beside the request path, only for the kinds it depends on, swapped whole, and never
claiming a revision whose state change is not compiled yet."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.factories import make_service, make_user
from wardgate.cluster.authorize import holder as holder_module
from wardgate.cluster.authorize.holder import StateHolder
from wardgate.cluster.authorize.state import build_state
from wardgate.cluster.policy import cel
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store import Create, Delete
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.propagation import LocalPropagation


def session(name: str) -> Session:
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": name},
            "spec": {"user": "alice", "type": "CLIENTLESS", "expiresAt": expires},
        }
    )


class Node:
    def __init__(self, store: MemoryStore, cache: ResourceCache, holder: StateHolder) -> None:
        self.store, self.cache, self.holder = store, cache, holder

    async def commit(self, *ops: Any) -> int:
        await self.store.commit(list(ops))
        return await self.store.revision()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    store = MemoryStore()
    await store.commit([Create(make_user())])
    cache = ResourceCache(store)
    await cache.load()
    holder = StateHolder(cache, cel.Compiler())
    async with asyncio.TaskGroup() as tasks:
        follower = tasks.create_task(cache.follow())
        rebuilder = tasks.create_task(holder.rebuild_forever())
        yield Node(store, cache, holder)
        follower.cancel()
        rebuilder.cancel()


async def test_a_service_change_is_compiled_before_its_revision_is_applied(node: Node) -> None:
    before = node.holder()
    revision = await node.commit(Create(make_service("llm")))
    await asyncio.wait_for(node.holder.wait_for(revision), 5)
    assert node.holder.applied >= revision
    assert "llm" in node.holder().services and "llm" not in before.services


async def test_sessions_advance_the_revision_without_a_rebuild(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = 0
    real = build_state

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal builds
        builds += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(holder_module, "build_state", counting)
    state = node.holder()
    for i in range(20):
        revision = await node.commit(Create(session(f"s{i}")))
        await asyncio.wait_for(node.holder.wait_for(revision), 5)
    revision = await node.commit(Delete("Session", "s3"))
    await asyncio.wait_for(LocalPropagation(node.holder).settle(revision), 5)
    assert builds == 0
    assert node.holder() is state


async def test_a_request_keeps_a_whole_state_while_a_rebuild_runs(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    started = threading.Event()
    real = build_state

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(holder_module, "build_state", slow)
    old = node.holder()
    revision = await node.commit(Create(make_service("llm")), Create(make_service("chat")))
    await asyncio.to_thread(started.wait, 5)
    # The loop is free while the build runs (it runs in a thread), and requests see the old state whole.
    for _ in range(10):
        await asyncio.sleep(0.005)
        assert node.holder() is old
        assert node.holder.applied < revision
    later = await node.commit(Create(session("during")))
    assert node.holder.applied < revision <= later  # a Session after the pending change cannot jump it
    release.set()
    await asyncio.wait_for(node.holder.wait_for(later), 5)
    new = node.holder()
    assert {"llm", "chat"} <= set(new.services)


async def test_a_failed_rebuild_keeps_the_old_state_and_is_retried(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = build_state

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(holder_module, "build_state", flaky)
    monkeypatch.setattr(holder_module, "RETRY_AFTER", 0.05)
    old = node.holder()
    revision = await node.commit(Create(make_service("llm")))
    await asyncio.sleep(0.02)
    assert node.holder() is old and node.holder.applied < revision
    await asyncio.wait_for(node.holder.wait_for(revision), 5)
    assert "llm" in node.holder().services and calls == 2
