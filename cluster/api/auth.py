"""Admin API authentication: the gateway's own identity machinery, then membership of `admins`.

Access tokens (Sessions) and ACCESS_TOKEN credentials are both accepted; everything is read from the
watch-fed cache, so a deleted credential or session stops working as soon as the cache sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import Forbidden, Unauthenticated
from cluster.identity.authenticate import Authenticator

ADMIN_GROUP = "admins"


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    credential: str | None
    session: str | None


def authenticate_admin(authenticator: Authenticator, authorization: str | None) -> Caller:
    """The admin calling, or Unauthenticated/Forbidden with a reason fit for the log."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected `Authorization: Bearer <token>`")
    identity = authenticator.from_token(token)
    user = identity.user
    if ADMIN_GROUP not in user.spec.groups:
        raise Forbidden(f"user {user.metadata.name!r} is not in group {ADMIN_GROUP!r}")
    return Caller(
        user=user.metadata.name,
        credential=identity.credential.metadata.name if identity.credential else None,
        session=identity.session.metadata.name if identity.session else None,
    )
