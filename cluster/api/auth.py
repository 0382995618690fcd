"""Admin API authentication: a bearer credential token whose user is in the `admins` group.

Everything comes from the watch-fed cache; a deleted or disabled credential stops working as soon as
the cache sees the change.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import Forbidden, Unauthenticated
from cluster.identity import credentials
from cluster.resources.credential import Credential
from cluster.resources.user import User
from cluster.store.cache import ResourceCache

ADMIN_GROUP = "admins"


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    credential: str


def authenticate_admin(cache: ResourceCache, authorization: str | None) -> Caller:
    """The admin calling, or Unauthenticated/Forbidden with a reason fit for the log."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected `Authorization: Bearer <token>`")
    name = credentials.credential_name(token)
    found = cache.get("Credential", name) if name is not None else None
    credential = found if isinstance(found, Credential) else None
    problem = credentials.verify(credential, token)
    if problem is not None or credential is None:
        raise Unauthenticated(f"invalid token ({problem})")
    user = cache.get("User", credential.spec.user)
    if not isinstance(user, User) or user.spec.is_disabled:
        raise Unauthenticated("invalid token (user missing or disabled)")
    if ADMIN_GROUP not in user.spec.groups:
        raise Forbidden(f"user {user.metadata.name!r} is not in group {ADMIN_GROUP!r}")
    return Caller(user=user.metadata.name, credential=credential.metadata.name)
