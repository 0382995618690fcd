"""Access tokens: EdDSA-signed JWTs whose subject is a Session, verified once and cached until expiry.

The cache holds verified claims, not decisions: revocation (the Session gone from the resource cache)
is still checked on every request by the caller.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from wardgate.cluster.errors import Unauthenticated

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 5


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: the Session (`sub`), the user, and when it stops being valid."""

    session: str
    user: str
    expires_at: float
    token_id: str
    audience: str | None = None
    """None: the cluster's own audience (`https://<domain>`), good everywhere; else the one resource (an MCP
    Service's endpoint, RFC 8707) the token was issued for, and good only there."""


class SigningKey:
    """The cluster's Ed25519 key (from `signing.key`) with its RFC 7638 thumbprint as `kid`."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self.private = key
        self.public = key.public_key()
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._x = _b64(raw)
        thumbprint = f'{{"crv":"Ed25519","kty":"OKP","x":"{self._x}"}}'.encode()
        self.kid = _b64(hashlib.sha256(thumbprint).digest())

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid, "use": "sig", "alg": ALGORITHM}


class TokenService:
    """Issues and verifies the cluster's access tokens (issuer and audience: `https://<domain>`)."""

    def __init__(self, key: SigningKey, issuer: str, cache_size: int = 100_000) -> None:
        self.key = key
        self.issuer = issuer
        self._verified: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size

    def issue(
        self, session: str, user: str, ttl: float, now: float | None = None, audience: str | None = None
    ) -> tuple[str, float]:
        """A token for the cluster, or with `audience` for that one resource only."""
        issued = now if now is not None else time.time()
        expires = issued + ttl
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.issuer,
            "sub": session,
            "usr": user,
            "iat": int(issued),
            "nbf": int(issued) - 1,
            "exp": int(expires),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.key.private, algorithm=ALGORITHM, headers={"kid": self.key.kid})
        return token, float(int(expires))

    def verify(self, token: str, now: float | None = None, resource: str | None = None) -> Claims:
        """The token's claims, or Unauthenticated with the reason (for logs). A token issued for one resource
        is valid only when `resource` (where it is used) is that resource."""
        current = now if now is not None else time.time()
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at + LEEWAY_SECONDS <= current:
                self._verified.pop(token, None)
                raise Unauthenticated("token expired")
            return _for(cached, resource)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token ({exc})") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        if header.get("kid") != self.key.kid:
            raise Unauthenticated("token signed by an unknown key")
        try:
            raw = jwt.decode(
                token,
                self.key.public,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub", "jti"],
                    "verify_sub": True,
                    "verify_aud": False,  # checked below: the cluster's audience, or one resource
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token ({exc})") from None
        if not isinstance(raw.get("usr"), str):
            raise Unauthenticated("invalid token (no user claim)")
        audience = raw["aud"]
        if not isinstance(audience, str):
            raise Unauthenticated("invalid token (audience is not one string)")
        claims = Claims(
            session=raw["sub"],
            user=raw["usr"],
            expires_at=float(raw["exp"]),
            token_id=raw["jti"],
            audience=None if audience == self.issuer else audience,
        )
        self._verified[token] = claims
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return _for(claims, resource)


def _for(claims: Claims, resource: str | None) -> Claims:
    if claims.audience is not None and claims.audience != resource:
        raise Unauthenticated(f"token issued for {claims.audience}, not for this resource")
    return claims
