"""The identity assertion: a short-lived JWT the gateway sends upstream in `x-wardgate-assertion`, so a
Service can know who is calling without trusting a plain header (as Pomerium's `X-Pomerium-Jwt-Assertion`).

Signed with the cluster's signing key (EdDSA, its `kid` in the header); the upstream verifies it against
`https://<domain>/oauth2/jwks`. Claims: `iss` (the cluster's base URL), `aud` (the Service's name, or its
configured audience), `sub` (the user), `groups`, `sid` (the Session, when there is one), `iat`, `exp`
(iat + 60 s), `jti`. A signed assertion is reused for the same (user, session, audience, groups) until
REFRESH_BEFORE seconds before it expires: one signature per caller and Service every ~45 s, not per request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from wardgate.cluster.identity.tokens import ALGORITHM, SigningKey

HEADER = "x-wardgate-assertion"
LIFETIME = 60
"""Seconds an assertion is valid (`exp - iat`)."""
REFRESH_BEFORE = 15
"""A cached assertion is replaced when fewer seconds than this remain (the upstream's clock may lag)."""
MAX_CACHED = 100_000


@dataclass(frozen=True, slots=True)
class _Signed:
    token: str
    groups: tuple[str, ...]
    renew_at: float


class AssertionSigner:
    """Signs (and caches) identity assertions for one cluster issuer."""

    def __init__(self, key: SigningKey, issuer: str) -> None:
        self._key = key
        self._issuer = issuer
        self._cache: dict[tuple[str, str | None, str], _Signed] = {}

    def assertion(
        self, user: str, session: str | None, groups: tuple[str, ...], audience: str, now: float | None = None
    ) -> str:
        current = time.time() if now is None else now
        key = (user, session, audience)
        cached = self._cache.get(key)
        if cached is not None and cached.renew_at > current and cached.groups == groups:
            return cached.token
        issued = int(current)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": user,
            "groups": list(groups),
            "iat": issued,
            "exp": issued + LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        if session is not None:
            claims["sid"] = session
        token = jwt.encode(claims, self._key.private, algorithm=ALGORITHM, headers={"kid": self._key.kid})
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v.renew_at > current}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = _Signed(token, groups, issued + LIFETIME - REFRESH_BEFORE)
        return token
