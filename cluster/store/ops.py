"""The pure part of a commit: check an op against the current state and stamp the new metadata."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from wardgate.cluster.errors import Conflict, NotFound
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Create, Delete, Op, Update


def key_of(op: Op) -> tuple[str, str]:
    if isinstance(op, Delete):
        return op.kind, op.name
    return op.resource.kind, op.resource.metadata.name


def apply_op(op: Op, current: AnyResource | None, revision: int) -> AnyResource | None:
    """The resource to store for `op` given the `current` one (None: absent), or None to delete.

    Raises NotFound or Conflict without side effects, so a caller can abort the whole commit.
    """
    kind, name = key_of(op)
    if isinstance(op, Delete):
        if current is None:
            raise NotFound(f"{kind.lower()}/{name} not found")
        if op.resource_version is not None and op.resource_version != current.metadata.resource_version:
            raise Conflict(
                f"{kind.lower()}/{name} changed: resourceVersion is {current.metadata.resource_version}, "
                f"not {op.resource_version}"
            )
        return None
    now = datetime.now(UTC)
    if isinstance(op, Create):
        if current is not None:
            raise Conflict(f"{kind.lower()}/{name} already exists")
        stamped: AnyResource = op.resource.with_metadata(
            uid=str(uuid.uuid4()), created_at=now, updated_at=now, resource_version=str(revision)
        )
        return stamped
    assert isinstance(op, Update)
    if current is None:
        raise NotFound(f"{kind.lower()}/{name} not found")
    expected = op.resource.metadata.resource_version
    if expected is not None and expected != current.metadata.resource_version:
        raise Conflict(
            f"{kind.lower()}/{name} changed since it was read: resourceVersion is "
            f"{current.metadata.resource_version}, the update was based on {expected}"
        )
    stamped = op.resource.with_metadata(
        uid=current.metadata.uid,
        created_at=current.metadata.created_at,
        updated_at=now,
        resource_version=str(revision),
    )
    return stamped
