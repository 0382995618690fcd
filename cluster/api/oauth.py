"""The cluster's own endpoints on `https://<domain>`: the OAuth2 token endpoint (client credentials,
RFC 6749 §4.4), discovery metadata (RFC 8414 / OIDC) and the JWKS.

Token requests write a Session to the store (an admin-path write, not the proxy hot path) and wait until
the resource cache has it, so the returned token works on the very next request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from cluster.identity import credentials
from cluster.identity.sessions import new_session
from cluster.identity.tokens import TokenService
from cluster.observability.accesslog import AccessLog
from cluster.resources.credential import Credential, CredentialType
from cluster.resources.session import Session, SessionType
from cluster.resources.user import User
from cluster.store import Create, Delete, Op, Store
from cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

ApexRoute = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str, log_reason: str | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.log_reason = log_reason or description


class ApexEndpoints:
    """Handlers for the bare cluster domain, dispatched by path."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        store: Store,
        cache: ResourceCache,
        tokens: TokenService,
        access_log: AccessLog,
        node: str,
    ) -> None:
        self._domain = domain
        self._base = base_url
        self._store = store
        self._cache = cache
        self._tokens = tokens
        self._log = access_log
        self._node = node
        self.extra_routes: dict[tuple[str, str], ApexRoute] = {}

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self._tokens.issuer,
            "token_endpoint": f"{self._base}/oauth2/token",
            "jwks_uri": f"{self._base}/oauth2/jwks",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["openid"],
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/oauth2/token":
            if request.method != "POST":
                return _json({"error": "invalid_request", "error_description": "use POST"}, 405, {"Allow": "POST"})
            return await self.token(request)
        if request.method == "GET" and path in (
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ):
            return _json(self.metadata())
        if request.method == "GET" and path == "/oauth2/jwks":
            return _json({"keys": [self._tokens.key.jwk()]})
        if request.method == "GET" and path == "/healthz":
            return _json({"status": "ok"})
        route = self.extra_routes.get((request.method, path))
        if route is not None:
            return await route(request)
        return _json({"error": "not_found", "error_description": f"no endpoint {path}"}, 404)

    async def _client_auth(self, request: web.BaseRequest, form: dict[str, str]) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        posted = "client_secret" in form
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                raise OAuthError(401, "invalid_client", "unsupported client authentication")
            if posted:
                raise OAuthError(400, "invalid_request", "use one client authentication method, not two")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", "client authentication failed", "malformed Basic") from None
            client_id, sep, secret = decoded.partition(":")
            if not sep:
                raise OAuthError(401, "invalid_client", "client authentication failed", "malformed Basic")
            return unquote_plus(client_id), unquote_plus(secret)
        if not posted or "client_id" not in form:
            raise OAuthError(401, "invalid_client", "client authentication failed", "no client credentials")
        return form["client_id"], form["client_secret"]

    def _verify_client(self, client_id: str, secret: str) -> Credential:
        name = credentials.credential_name(secret)
        found = self._cache.get("Credential", client_id)
        credential = found if isinstance(found, Credential) else None
        problem = credentials.verify(credential, secret)
        if problem is None and name != client_id:
            problem = "client_id does not match the secret"
        if problem is None and credential is not None and credential.spec.type is not CredentialType.OAUTH2:
            problem = f"credential type {credential.spec.type.value} is not OAUTH2"
        user = self._cache.get("User", credential.spec.user) if credential is not None else None
        if problem is None and (not isinstance(user, User) or user.spec.is_disabled):
            problem = "user missing or disabled"
        if problem is not None or credential is None:
            raise OAuthError(401, "invalid_client", "client authentication failed", problem)
        return credential

    async def token(self, request: web.BaseRequest) -> web.StreamResponse:
        started = datetime.now(UTC)
        entry: dict[str, Any] = {
            "time": started.isoformat(),
            "node": self._node,
            "listener": "public",
            "method": request.method,
            "path": request.path,
            "remote": request.remote,
        }
        try:
            if not request.content_type.startswith("application/x-www-form-urlencoded"):
                raise OAuthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            client_id, secret = await self._client_auth(request, form)
            entry["credential"] = client_id[:64]
            if form.get("grant_type") != "client_credentials":
                raise OAuthError(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
            credential = self._verify_client(client_id, secret)
            entry["user"] = credential.spec.user
            session = await self._create_session(credential)
            ttl = max(1.0, (session.spec.expires_at - datetime.now(UTC)).total_seconds())
            token, _ = self._tokens.issue(session.metadata.name, credential.spec.user, ttl)
            entry.update(session=session.metadata.name, status=200)
            body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl)}
            if form.get("scope"):
                body["scope"] = form["scope"]
            return _json(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        except OAuthError as exc:
            entry.update(status=exc.status, reason=exc.log_reason)
            headers = {"Cache-Control": "no-store"}
            if exc.status == 401:
                headers["WWW-Authenticate"] = f'Basic realm="{self._domain}"'
            return _json({"error": exc.error, "error_description": exc.description}, exc.status, headers)
        finally:
            self._log.write(entry)

    async def _create_session(self, credential: Credential) -> Session:
        existing = [s for s in self._cache.list_kind("Session") if isinstance(s, Session)]
        session, evict = new_session(credential, SessionType.CLIENTLESS, existing)
        ops: list[Op] = [Create(session), *(Delete("Session", s.metadata.name) for s in evict)]
        (stored, *_) = await self._store.commit(ops)
        assert isinstance(stored, Session)
        await asyncio.wait_for(self._cache.wait_for(int(stored.metadata.resource_version or 0)), 5)
        return stored
