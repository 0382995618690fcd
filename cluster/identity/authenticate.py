"""Who is calling the gateway: a bearer access token (a Session), an ACCESS_TOKEN credential, or the
browser session cookie. Everything is read from the watch-fed cache; nothing touches the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cluster.errors import Unauthenticated
from cluster.identity import credentials
from cluster.identity.tokens import TokenService
from cluster.resources.credential import Credential, CredentialType
from cluster.resources.session import Session
from cluster.resources.user import User
from cluster.store.cache import ResourceCache

SESSION_COOKIE = "wardgate_session"


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: always a User; a Session unless a long-lived ACCESS_TOKEN credential was used."""

    user: User
    session: Session | None
    credential: Credential | None


class Authenticator:
    def __init__(self, cache: ResourceCache, tokens: TokenService) -> None:
        self._cache = cache
        self._tokens = tokens

    def _credential(self, name: str | None) -> Credential | None:
        found = self._cache.get("Credential", name) if name else None
        return found if isinstance(found, Credential) else None

    def _user(self, name: str) -> User:
        user = self._cache.get("User", name)
        if not isinstance(user, User):
            raise Unauthenticated(f"user {name!r} no longer exists")
        if user.spec.is_disabled:
            raise Unauthenticated(f"user {name!r} is disabled")
        return user

    def from_token(self, token: str) -> Identity:
        """Identify a bearer token or cookie value; Unauthenticated says why not (for the log)."""
        if token.startswith(credentials.PREFIX + "."):
            return self._from_credential_token(token)
        claims = self._tokens.verify(token)
        session = self._cache.get("Session", claims.session)
        if not isinstance(session, Session):
            raise Unauthenticated(f"session {claims.session!r} was revoked or has ended")
        if session.spec.expires_at.timestamp() <= time.time():
            raise Unauthenticated(f"session {claims.session!r} expired")
        credential = None
        if session.spec.credential is not None:
            credential = self._credential(session.spec.credential)
            if credential is None or credential.spec.is_disabled:
                raise Unauthenticated(f"credential {session.spec.credential!r} of the session was revoked")
        return Identity(self._user(session.spec.user), session, credential)

    def _from_credential_token(self, token: str) -> Identity:
        credential = self._credential(credentials.credential_name(token))
        problem = credentials.verify(credential, token, datetime.now(UTC))
        if problem is not None or credential is None:
            raise Unauthenticated(f"invalid credential token ({problem})")
        if credential.spec.type is not CredentialType.ACCESS_TOKEN:
            raise Unauthenticated(
                f"credential {credential.metadata.name!r} is {credential.spec.type.value}: exchange it for an access "
                "token first"
            )
        return Identity(self._user(credential.spec.user), None, credential)
