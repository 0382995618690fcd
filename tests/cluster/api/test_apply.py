"""plan_apply: the pure decision table of `wardgatectl apply`."""

from __future__ import annotations

import pytest
import yaml

from tests.factories import CLUSTER_MADE_DOCUMENTS, make_secret, make_service
from wardgate.cluster.api.apply import CLUSTER_MADE, Action, plan_apply
from wardgate.cluster.errors import Conflict, Invalid
from wardgate.cluster.resources import parse_manifest
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.store import Create, Delete, Update


def stored(resource: AnyResource, version: str = "5", managed_by: str = "apply") -> AnyResource:
    result: AnyResource = resource.with_metadata(resource_version=version, managed_by=managed_by, uid="u")
    return result


def key(r: AnyResource) -> tuple[str, str]:
    return (r.kind, r.metadata.name)


def test_create_configure_unchanged() -> None:
    same = stored(make_service("same"))
    old = stored(make_service("changed", url="http://127.0.0.1:1"))
    ops, outcomes = plan_apply(
        [make_service("new"), make_service("same"), make_service("changed", url="http://127.0.0.1:2")],
        {key(same): same, key(old): old},
        prune=False,
    )
    assert [(o.name, o.action) for o in outcomes] == [
        ("new", Action.CREATED),
        ("same", Action.UNCHANGED),
        ("changed", Action.CONFIGURED),
    ]
    assert isinstance(ops[0], Create) and ops[0].resource.metadata.managed_by == "apply"
    assert isinstance(ops[1], Update) and ops[1].resource.metadata.resource_version == "5"
    assert len(ops) == 2


def test_secret_change_is_detected_through_redaction() -> None:
    current = stored(make_secret("k", "one"))
    _, outcomes = plan_apply([make_secret("k", "two")], {key(current): current}, prune=False)
    assert outcomes[0].action is Action.CONFIGURED
    _, outcomes = plan_apply([make_secret("k", "one")], {key(current): current}, prune=False)
    assert outcomes[0].action is Action.UNCHANGED


def test_prune_only_touches_applied_resources_of_applied_kinds() -> None:
    by_apply = stored(make_service("gone"))
    by_cli = stored(make_service("manual"), managed_by="cli")
    other_kind = stored(make_secret("s"))
    ops, outcomes = plan_apply(
        [make_service("kept")], {key(r): r for r in (by_apply, by_cli, other_kind)}, prune=True
    )
    assert [(o.name, o.action) for o in outcomes] == [("kept", Action.CREATED), ("gone", Action.PRUNED)]
    assert isinstance(ops[1], Delete) and ops[1].resource_version == "5"


def test_stale_resource_version_is_a_conflict() -> None:
    current = stored(make_service("a"), version="7")
    with pytest.raises(Conflict, match="changed since it was read"):
        plan_apply(
            [make_service("a", url="http://x").with_metadata(resource_version="6")],
            {key(current): current},
            prune=False,
        )


def test_duplicates_and_cluster_made_kinds_are_invalid() -> None:
    with pytest.raises(Invalid, match="declared twice"):
        plan_apply([make_service("a"), make_service("a")], {}, prune=False)
    from wardgate.cluster.resources.session import Session

    session = Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": "x"},
            "spec": {"user": "u", "type": "CLIENT", "expiresAt": "2030-01-01T00:00:00Z"},
        }
    )
    with pytest.raises(Invalid, match="Session cannot be applied: logging in makes them"):
        plan_apply([session], {}, prune=False)


@pytest.mark.parametrize("kind", sorted(CLUSTER_MADE))
def test_each_cluster_made_kind_is_refused_with_how_it_is_made(kind: str) -> None:
    (resource,) = parse_manifest(yaml.safe_dump(CLUSTER_MADE_DOCUMENTS[kind]), "m.yaml")
    with pytest.raises(Invalid) as refused:
        plan_apply([resource], {}, prune=False)
    assert str(refused.value) == f"{kind} cannot be applied: {CLUSTER_MADE[kind]}"
