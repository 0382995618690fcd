"""Who is calling the gateway: a bearer access token (a Session), an ACCESS_TOKEN credential, or the
browser session cookie. Everything is read from the watch-fed cache; nothing touches the store.

The session cookie is read by one parser, aiohttp's own (the one behind `request.cookies`), and the same
parser decides which cookies are cut out of what upstreams and policies see, so no spelling of the cookie
can be accepted here and still be forwarded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp._cookie_helpers import parse_cookie_header

from wardgate.cluster.errors import Unauthenticated
from wardgate.cluster.identity import credentials
from wardgate.cluster.identity.tokens import TokenService
from wardgate.cluster.resources.credential import Credential, CredentialType
from wardgate.cluster.resources.session import Session
from wardgate.cluster.resources.user import User
from wardgate.cluster.store.cache import ResourceCache

SESSION_COOKIE = "wardgate_session"
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
"""What a token can be: printable ASCII without spaces (JWTs and credential tokens are far shorter)."""
_SESSION_SPELLING = re.compile(r"(?:^|[^!#$%&'*+.^`|~\w-])\$?wardgate_session\s*=", re.IGNORECASE | re.ASCII)
"""The cookie's name where a looser parser than ours might find it: inside another cookie's value (after a
comma, a quote or a space), with a `$` (RFC 2109) or in another case."""


def session_cookie(cookie_headers: Iterable[str]) -> str | None:
    """The session cookie's value over every Cookie header line; Unauthenticated when it appears with
    different values (a cookie tossed beside the real one: neither can be trusted to be the caller's)."""
    values = {
        morsel.value
        for header in cookie_headers
        for name, morsel in parse_cookie_header(header)
        if name == SESSION_COOKIE
    }
    if len(values) > 1:
        raise Unauthenticated("several different session cookies")
    return values.pop() if values else None


def without_session_cookie(cookie_header: str) -> str:
    """The Cookie header with every cookie that could be read as the session cookie taken out: each one our
    parser names so, in any case or with `$`, and any whose value holds such a name. What is left is the
    parser's own rendering of the other cookies (`name=value; ...`), "" when none is left."""
    kept: list[str] = []
    for name, morsel in parse_cookie_header(cookie_header):
        pair = f"{name}={morsel.coded_value}"
        if name.lower().lstrip("$") == SESSION_COOKIE or _SESSION_SPELLING.search(pair):
            continue
        kept.append(pair)
    return "; ".join(kept)


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

    def from_token(self, token: str, resource: str | None = None) -> Identity:
        """Identify a bearer token or cookie value; Unauthenticated says why not (for the log). `resource` is
        where it is used (a Service's MCP endpoint): a token issued for one resource is good only there."""
        if not _TOKEN.fullmatch(token):
            # Bytes a client sent that are not UTF-8 arrive as surrogates; never let them reach the decoders.
            raise Unauthenticated("malformed token")
        if token.startswith(credentials.PREFIX + "."):
            return self._from_credential_token(token)
        claims = self._tokens.verify(token, resource=resource)
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
