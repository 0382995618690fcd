"""Admin API authentication and authorization: the gateway's identity machinery, then policy.

Access tokens (Sessions) and ACCESS_TOKEN credentials are accepted, read from the watch-fed cache, so
a deleted credential or session stops working as soon as the cache sees it. Whether the caller may
administer is a policy decision (`AdminPolicy`, wired by main), by default "member of group admins".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from wardgate.cluster.errors import Unauthenticated
from wardgate.cluster.identity.authenticate import Authenticator, Identity


class AdminPolicy(Protocol):
    """Raises Forbidden (message: the reason) unless policy allows this admin request."""

    def authorize_admin(
        self, identity: Identity, method: str, url: URL, headers: Mapping[str, str], ip: str
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    credential: str | None
    session: str | None


def identify(authenticator: Authenticator, authorization: str | None) -> Identity:
    """The caller, or Unauthenticated with a reason fit for the log."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected `Authorization: Bearer <token>`")
    return authenticator.from_token(token)


def caller_of(identity: Identity) -> Caller:
    return Caller(
        user=identity.user.metadata.name,
        credential=identity.credential.metadata.name if identity.credential else None,
        session=identity.session.metadata.name if identity.session else None,
    )
