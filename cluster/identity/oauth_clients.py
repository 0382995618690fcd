"""The authorization server's rules for interactive MCP clients, as pure functions: who may register (the
`[oauth.registration]` policy of cluster.toml), which redirect URIs are acceptable, and the PKCE check.

    register(body) ─▶ registration_problem(settings, ...) ─▶ plan_client ─▶ an OAuthClient to store
    authorize ─▶ redirect_uri exactly one the client registered ─▶ code (random; stored by its hash)
    token ─▶ code_name(code) ─▶ the stored AuthorizationCode ─▶ pkce_matches(challenge, verifier)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wardgate.cluster.resources.oauth_client import AuthorizationCode, OAuthClient

CODE_TTL = timedelta(seconds=60)
"""How long an authorization code can be redeemed (RFC 6749 §4.1.2 recommends at most 10 minutes)."""
MAX_CODES = 10_000
"""Codes waiting to be redeemed across the cluster; beyond it the authorization endpoint asks to retry later."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
"""RFC 7636 §4.1: code_verifier = 43*128unreserved."""
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
"""BASE64URL(SHA256(...)) without padding is exactly 43 characters."""


class RegistrationSettings(BaseModel):
    """`[oauth.registration]`: whether MCP clients may register themselves (RFC 7591) and for which redirects.

    `enabled` (default false): registration is open; otherwise `/oauth2/register` refuses and only
    workloads (client credentials) get tokens. `loopback` (default true): a loopback redirect
    (`http://127.0.0.1:<port>/...`, `http://localhost:<port>/...`, `http://[::1]:<port>/...`, any port: where
    desktop MCP clients listen, RFC 8252 §7.3) is acceptable. `redirect_uris`: further redirect URIs
    accepted exactly as written (for instance a hosted MCP client's https callback). `max_clients`: how many
    registered clients the cluster keeps; registration refuses beyond it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    loopback: bool = True
    redirect_uris: list[str] = Field(default_factory=list, max_length=100)
    max_clients: int = Field(default=500, ge=1, le=100_000)

    @field_validator("redirect_uris")
    @classmethod
    def _absolute(cls, values: list[str]) -> list[str]:
        for value in values:
            problem = _malformed(value)
            if problem is not None:
                raise ValueError(f"redirect_uris: {value!r} {problem}")
        return values


class OAuthSettings(BaseModel):
    """`[oauth]` in cluster.toml: the authorization server for interactive MCP clients."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)


def _malformed(uri: str) -> str | None:
    """Why `uri` cannot be a redirect URI at all (RFC 6749 §3.1.2: absolute, no fragment), else None."""
    if len(uri) > 2048 or not uri.isprintable() or any(c in uri for c in " \\"):
        return "is not a printable URI of at most 2048 characters"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (a bad port raises ValueError)
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http(s) URI"
    if parts.fragment or "#" in uri:
        return "has a fragment"
    if parts.username is not None or parts.password is not None:
        return "has user information"
    return None


def _is_loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if parts.scheme != "http" or host.lower() not in LOOPBACK_HOSTS:
        return False
    return host == "localhost" or ip_address(host.strip("[]")).is_loopback


def redirect_problem(settings: RegistrationSettings, uri: str) -> str | None:
    """Why the registration policy refuses `uri` as a redirect URI, else None."""
    problem = _malformed(uri)
    if problem is not None:
        return problem
    if uri in settings.redirect_uris:
        return None
    if settings.loopback and _is_loopback(uri):
        return None
    allowed = (["a loopback http URI (127.0.0.1, localhost, [::1])"] if settings.loopback else []) + [
        "one of oauth.registration.redirect_uris"
    ]
    return "is not allowed by the registration policy (allowed: " + " or ".join(allowed) + ")"


class RegistrationRefused(Exception):
    """A refused registration: `error` per RFC 7591 §3.2.2 (or `access_denied`), `status`, the description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def plan_client(settings: RegistrationSettings, body: object, registered: int) -> OAuthClient:
    """The OAuthClient to store for an RFC 7591 registration request `body` (parsed JSON), or
    RegistrationRefused naming the field and the reason."""
    if not settings.enabled:
        raise RegistrationRefused(403, "access_denied", "client registration is closed on this cluster")
    if registered >= settings.max_clients:
        raise RegistrationRefused(
            403, "access_denied", f"the cluster already holds its maximum of {settings.max_clients} registered clients"
        )
    if not isinstance(body, dict):
        raise RegistrationRefused(400, "invalid_client_metadata", "the body must be a JSON object")
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > 10 or not all(isinstance(u, str) for u in uris):
        raise RegistrationRefused(400, "invalid_redirect_uri", "redirect_uris must be a list of 1 to 10 strings")
    for uri in uris:
        problem = redirect_problem(settings, uri)
        if problem is not None:
            raise RegistrationRefused(400, "invalid_redirect_uri", f"redirect_uris: {uri[:200]!r} {problem}")
    method = body.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise RegistrationRefused(
            400,
            "invalid_client_metadata",
            f"token_endpoint_auth_method {str(method)[:40]!r} is not supported: only public clients ('none') register",
        )
    grants = body.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or "authorization_code" not in grants:
        raise RegistrationRefused(400, "invalid_client_metadata", "grant_types must include authorization_code")
    responses = body.get("response_types", ["code"])
    if not isinstance(responses, list) or "code" not in responses:
        raise RegistrationRefused(400, "invalid_client_metadata", "response_types must include code")
    name = body.get("client_name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise RegistrationRefused(400, "invalid_client_metadata", "client_name must be a string of at most 200")
    return OAuthClient.model_validate(
        {
            "kind": "OAuthClient",
            "metadata": {"name": f"mcp-{secrets.token_hex(12)}"},
            "spec": {"clientName": name, "redirectUris": list(dict.fromkeys(uris))},
        }
    )


def client_document(client: OAuthClient) -> dict[str, object]:
    """The RFC 7591 §3.2.1 answer for a stored client."""
    created = client.metadata.created_at or datetime.now(UTC)
    return {
        "client_id": client.metadata.name,
        "client_id_issued_at": int(created.timestamp()),
        "client_name": client.spec.client_name,
        "redirect_uris": client.spec.redirect_uris,
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }


def code_name(code: str) -> str:
    """The AuthorizationCode name of a code: a hash, so the store and the change feed never hold the code."""
    return "code-" + hashlib.sha256(code.encode()).hexdigest()[:48]


def new_code(
    *,
    client: str,
    user: str,
    session: str,
    redirect_uri: str,
    challenge: str,
    resource: str,
    scope: str,
    now: datetime | None = None,
) -> tuple[str, AuthorizationCode]:
    """A fresh code and the AuthorizationCode that stands for it (valid CODE_TTL from `now`)."""
    code = secrets.token_urlsafe(32)
    expires = (now or datetime.now(UTC)) + CODE_TTL
    record = AuthorizationCode.model_validate(
        {
            "kind": "AuthorizationCode",
            "metadata": {"name": code_name(code)},
            "spec": {
                "client": client,
                "user": user,
                "session": session,
                "redirectUri": redirect_uri,
                "codeChallenge": challenge,
                "resource": resource,
                "scope": scope,
                "expiresAt": expires.isoformat(),
            },
        }
    )
    return code, record


def challenge_problem(challenge: str | None, method: str | None) -> str | None:
    """Why an authorization request's PKCE parameters are refused (S256 is mandatory), else None."""
    if not challenge:
        return "code_challenge is required (PKCE)"
    if method != "S256":
        return f"code_challenge_method must be S256, not {str(method)[:20]!r}"
    if not _CHALLENGE.fullmatch(challenge):
        return "code_challenge is not a base64url SHA-256 digest (43 characters)"
    return None


def pkce_matches(challenge: str, verifier: str) -> bool:
    """RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) == code_challenge (S256), compared in constant time."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))
