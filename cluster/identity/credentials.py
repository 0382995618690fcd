"""Credential tokens: generation, the stored hash, and verification against a cached Credential.

A token reads `wgt.<credential name>.<43 url-safe random characters>`: the name finds the Credential
in the cache without a search, and only the SHA-256 of the whole token is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.meta import NAME_PATTERN

PREFIX = "wgt"
_NO_MATCH = "0" * 64


def generate(name: str) -> tuple[str, str, str]:
    """(token, its sha256 hex, a displayable prefix) for a credential named `name`."""
    token = f"{PREFIX}.{name}.{secrets.token_urlsafe(32)}"
    return token, digest(token), token[: len(PREFIX) + len(name) + 6]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def credential_name(token: str) -> str | None:
    """The credential a token claims to belong to, or None if it is not shaped like one of ours."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not NAME_PATTERN.fullmatch(parts[1]) or len(parts[2]) < 32:
        return None
    return parts[1]


def verify(credential: Credential | None, token: str, now: datetime | None = None) -> str | None:
    """None if `token` is valid for `credential`, else the reason it is not (for logs, not clients)."""
    presented = digest(token)
    expected = credential.status.token_sha256 if credential is not None else None
    matches = hmac.compare_digest(expected or _NO_MATCH, presented)
    if credential is None:
        return "unknown credential"
    if expected is None or not matches:
        return "token does not match"
    if credential.spec.is_disabled:
        return "credential disabled"
    expires = credential.spec.expires_at
    if expires is not None and expires <= (now or datetime.now(UTC)):
        return "credential expired"
    return None
