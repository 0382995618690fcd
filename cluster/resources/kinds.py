"""The registry of kinds: name and plural to model class, and (de)serialisation of stored documents."""

from __future__ import annotations

from typing import Any

from wardgate.cluster.resources.credential import Credential, Secret
from wardgate.cluster.resources.identity_provider import IdentityProvider
from wardgate.cluster.resources.node import AddressLease, Node
from wardgate.cluster.resources.oauth_client import AuthorizationCode, OAuthClient
from wardgate.cluster.resources.policy import Policy
from wardgate.cluster.resources.pricing import Pricing
from wardgate.cluster.resources.quota import Quota
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.session import Session
from wardgate.cluster.resources.user import Group, User

AnyResource = (
    Service
    | Policy
    | User
    | Group
    | Credential
    | Secret
    | Session
    | IdentityProvider
    | Node
    | AddressLease
    | Quota
    | Pricing
    | OAuthClient
    | AuthorizationCode
)

KINDS: dict[str, type[AnyResource]] = {
    cls.kind_name: cls
    for cls in (
        Service,
        Policy,
        User,
        Group,
        Credential,
        Secret,
        Session,
        IdentityProvider,
        Node,
        AddressLease,
        Quota,
        Pricing,
        OAuthClient,
        AuthorizationCode,
    )
}

APPLYABLE_KINDS = frozenset({"Service", "Policy", "User", "Group", "Secret", "IdentityProvider", "Quota", "Pricing"})
"""Kinds `apply` accepts. Credentials, Sessions, OAuthClients and AuthorizationCodes are made by the cluster
(api/apply.py CLUSTER_MADE says how); Nodes and AddressLeases by agents and the address allocator."""

_ALIASES = {
    **{cls.plural: name for name, cls in KINDS.items()},
    **{name.lower(): name for name in KINDS},
    "svc": "Service",
    "idp": "IdentityProvider",
}


def plural_to_kind(word: str) -> str:
    """`services`, `service`, `Service` or `svc` to `Service`; KeyError for anything else."""
    if word in KINDS:
        return word
    try:
        return _ALIASES[word.lower()]
    except KeyError:
        known = ", ".join(sorted(cls.plural for cls in KINDS.values()))
        raise KeyError(f"unknown kind {word!r} (known: {known})") from None


def kind_of(kind: str) -> type[AnyResource]:
    return KINDS[kind]


def to_document(resource: AnyResource, *, reveal: bool = False) -> dict[str, Any]:
    """The JSON-ready dict of a resource. Secret data is redacted unless `reveal` (storage only)."""
    doc = resource.model_dump(mode="json", exclude_none=True)
    if reveal and isinstance(resource, Secret):
        doc["spec"]["data"] = resource.spec.reveal()
    return doc


def from_document(doc: dict[str, Any]) -> AnyResource:
    """Parse a stored or received document whose `kind` is known."""
    return KINDS[doc["kind"]].model_validate(doc)


def public_view(resource: AnyResource) -> dict[str, Any]:
    """What `get` shows: no secret values, no token or code hashes."""
    doc = to_document(resource)
    if isinstance(resource, Credential):
        doc.get("status", {}).pop("tokenSha256", None)
    elif isinstance(resource, AuthorizationCode):
        # The name is the code's hash (identity/oauth_clients.py code_name): shown cut short, as a token prefix.
        doc["metadata"]["name"] = resource.metadata.name[: len("code-") + 8] + "…"
    return doc
