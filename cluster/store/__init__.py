"""The resource store: one protocol, two implementations (memory for tests, SQLite for nodes).

Every write gets the next store-wide revision; a resource's `metadata.resourceVersion` is the revision
of its last write. `commit` applies a list of operations atomically (all or nothing), and `watch`
replays the change feed from a revision, which is how caches and other nodes follow the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from wardgate.cluster.resources.kinds import AnyResource


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change: the resource after a PUT, or as it was just before a DELETE."""

    revision: int
    type: EventType
    resource: AnyResource


@dataclass(frozen=True, slots=True)
class Create:
    """Create; Conflict if a resource of that kind and name exists."""

    resource: AnyResource


@dataclass(frozen=True, slots=True)
class Update:
    """Replace an existing resource. When `resource.metadata.resourceVersion` is set it must be the
    stored one (optimistic concurrency): otherwise Conflict. NotFound if absent."""

    resource: AnyResource


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete; NotFound if absent; Conflict if `resource_version` is given and is not the stored one."""

    kind: str
    name: str
    resource_version: str | None = None


Op = Create | Update | Delete


class Compacted(Exception):
    """`watch` was asked for revisions the store no longer keeps; re-list with `snapshot`."""


class Store(Protocol):
    """Persistent resources with a change feed. Errors are cluster.errors (NotFound, Conflict, Unavailable)."""

    async def get(self, kind: str, name: str) -> AnyResource: ...

    async def list_kind(self, kind: str) -> list[AnyResource]: ...

    async def revision(self) -> int:
        """The revision of the last write."""
        ...

    async def snapshot(self) -> tuple[int, list[AnyResource]]:
        """Every resource and the revision they are consistent at."""
        ...

    async def commit(self, ops: Sequence[Op]) -> list[AnyResource | None]:
        """Apply all ops atomically; returns the stored resource (or None for a delete) per op."""
        ...

    def watch(self, after: int) -> AsyncIterator[Event]:
        """Events with revision > `after`, in order, forever. Raises Compacted if `after` is too old."""
        ...

    async def close(self) -> None: ...


async def create(store: Store, resource: AnyResource) -> AnyResource:
    (stored,) = await store.commit([Create(resource)])
    assert stored is not None
    return stored


async def update(store: Store, resource: AnyResource) -> AnyResource:
    (stored,) = await store.commit([Update(resource)])
    assert stored is not None
    return stored


async def delete(store: Store, kind: str, name: str, resource_version: str | None = None) -> None:
    await store.commit([Delete(kind, name, resource_version)])
