"""Server-side apply: decide create/configure/unchanged/prune for a declared set, as one atomic commit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from wardgate.cluster.errors import Conflict, Invalid
from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.resources.kinds import APPLYABLE_KINDS, AnyResource
from wardgate.cluster.store import Create, Delete, Op, Update

MANAGED_BY_APPLY = "apply"

CLUSTER_MADE = {
    "Credential": "use `wardgatectl create credential` (it generates the token and shows it once)",
    "Session": "logging in makes them",
    "OAuthClient": "MCP clients register themselves at /oauth2/register (docs/mcp.md)",
    "AuthorizationCode": "/oauth2/authorize mints them when a user signs in through an MCP client",
    "Node": "each node registers itself through its agent (`wardgate-agent`)",
    "AddressLease": "the cluster leases a tunnel address to a Session when its client connects",
}
"""Kinds only the cluster writes, each with how they are made; neither apply nor PUT writes them. They carry
generated secrets, or stand for one: a written AuthorizationCode would be a code its writer could redeem as
any user, a written AddressLease would take a connected peer's tunnel address."""


class Action(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    PRUNED = "pruned"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    name: str
    action: Action


def _same(a: AnyResource, b: AnyResource) -> bool:
    if isinstance(a, Secret) and isinstance(b, Secret):
        if a.spec.reveal() != b.spec.reveal():
            return False
    elif a.spec != b.spec:
        return False
    return a.metadata.labels == b.metadata.labels and a.metadata.annotations == b.metadata.annotations


def plan_apply(
    declared: Iterable[AnyResource],
    existing: Mapping[tuple[str, str], AnyResource],
    prune: bool,
) -> tuple[list[Op], list[Outcome]]:
    """The ops and outcomes for applying `declared` over `existing` (every stored resource of the
    declared kinds). Pure: raises Invalid or Conflict before anything is written."""
    ops: list[Op] = []
    outcomes: list[Outcome] = []
    seen: set[tuple[str, str]] = set()
    for resource in declared:
        key = (resource.kind, resource.metadata.name)
        if resource.kind not in APPLYABLE_KINDS:
            how = CLUSTER_MADE.get(resource.kind, "the cluster makes them")
            raise Invalid(f"{resource.kind} cannot be applied: {how}")
        if key in seen:
            raise Invalid(f"{resource.kind.lower()}/{resource.metadata.name} is declared twice")
        seen.add(key)
        current = existing.get(key)
        wanted_version = resource.metadata.resource_version
        if current is None:
            if wanted_version is not None:
                raise Conflict(
                    f"{resource.kind.lower()}/{resource.metadata.name} has resourceVersion {wanted_version} "
                    "but does not exist (deleted since it was read?)"
                )
            ops.append(Create(resource.with_metadata(managed_by=MANAGED_BY_APPLY)))
            outcomes.append(Outcome(resource.kind, resource.metadata.name, Action.CREATED))
            continue
        if wanted_version is not None and wanted_version != current.metadata.resource_version:
            raise Conflict(
                f"{resource.kind.lower()}/{resource.metadata.name} changed since it was read: resourceVersion "
                f"is {current.metadata.resource_version}, the manifest has {wanted_version}"
            )
        if _same(resource, current):
            outcomes.append(Outcome(resource.kind, resource.metadata.name, Action.UNCHANGED))
            continue
        updated = resource.model_copy(update={"status": current.status}).with_metadata(
            resource_version=current.metadata.resource_version,
            managed_by=current.metadata.managed_by or MANAGED_BY_APPLY,
        )
        ops.append(Update(updated))
        outcomes.append(Outcome(resource.kind, resource.metadata.name, Action.CONFIGURED))
    if prune:
        kinds = {kind for kind, _ in seen}
        for (kind, name), current in sorted(existing.items()):
            if kind in kinds and (kind, name) not in seen and current.metadata.managed_by == MANAGED_BY_APPLY:
                ops.append(Delete(kind, name, current.metadata.resource_version))
                outcomes.append(Outcome(kind, name, Action.PRUNED))
    return ops, outcomes
