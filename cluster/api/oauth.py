"""The OAuth2 token endpoint, discovery metadata (RFC 8414 / OIDC) and the JWKS, on `https://<domain>`.

    POST /oauth2/token grant_type=client_credentials (RFC 6749 §4.4)
        ─▶ client authentication (Basic or form, not both) ─▶ OAUTH2 Credential, User standing
        ─▶ SessionService.open (CLIENTLESS; the credential's oldest Sessions beyond its cap are evicted)
        ─▶ once every worker enforces it: a Bearer access token
    POST /oauth2/token grant_type=authorization_code (RFC 6749 §4.1.3, a public client of api.authorize)
        ─▶ the AuthorizationCode named by the code's hash, read from the store and deleted (single use, even
           when a check below fails) ─▶ not expired, same client_id and redirect_uri, PKCE S256 verifier,
           same resource ─▶ an access token for that resource only, on the user's browser-login Session

Errors are RFC 6749 §5.2 bodies (`{"error", "error_description"}`); a failed client authentication is 401
with `WWW-Authenticate: Basic`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import orjson
from aiohttp import web

from wardgate.cluster.api.site_log import Refused, oauth_error, route
from wardgate.cluster.errors import Conflict, NotFound, Unavailable
from wardgate.cluster.identity import credentials
from wardgate.cluster.identity.oauth_clients import RegistrationSettings, code_name, pkce_matches
from wardgate.cluster.identity.sessions import CLIENTLESS_TTL, SessionService
from wardgate.cluster.identity.tokens import TokenService
from wardgate.cluster.resources.credential import Credential, CredentialType
from wardgate.cluster.resources.oauth_client import AuthorizationCode, OAuthClient
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.resources.user import User, UserType
from wardgate.cluster.store import Delete, Store
from wardgate.cluster.store.cache import ResourceCache

CODE_GRANT_TOKEN_TTL = 3600.0
"""The longest life of a token from the authorization-code grant (never past its browser-login Session)."""


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


class OAuthError(Refused):
    """A refused token request: `description` goes to the client, `reason` (more detail) to the log."""

    def __init__(self, status: int, error: str, description: str, log_reason: str | None = None) -> None:
        super().__init__(log_reason or description)
        self.status, self.error, self.description = status, error, description
        self.realm = ""

    def response(self) -> web.StreamResponse:
        headers = {"WWW-Authenticate": f'Basic realm="{self.realm}"'} if self.status == 401 else None
        return oauth_error(self.status, self.error, self.description, headers)


def mcp_resource(cache: ResourceCache, domain: str, value: str) -> str | None:
    """The audience of a token asked for one resource (RFC 8707): an MCP Service's endpoint,
    `https://<service>.<domain>[:port]/mcp`, normalised as the gateway compares it (lower case, no :443);
    None when `value` is not the endpoint of an MCP Service of this cluster."""
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    suffix = "." + domain
    service = cache.get("Service", host[: -len(suffix)]) if host.endswith(suffix) else None
    try:
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme != "https"
        or parts.path != "/mcp"
        or parts.query
        or parts.fragment
        or parts.username is not None
        or not isinstance(service, Service)
        or service.spec.mode != "MCP"
    ):
        return None
    return f"https://{host}" + (f":{port}" if port is not None and port != 443 else "") + "/mcp"


class TokenEndpoint:
    """The OAuth2 authorization server of the cluster (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        cache: ResourceCache,
        store: Store,
        tokens: TokenService,
        sessions: SessionService,
        registration: RegistrationSettings,
    ) -> None:
        self._domain = domain
        self._base = base_url
        self._cache = cache
        self._store = store
        self._tokens = tokens
        self._sessions = sessions
        self._registration = registration

    def routes(self) -> list[web.RouteDef]:
        return [
            route("POST", "/oauth2/token", "token", self.token),
            route("GET", "/.well-known/openid-configuration", "discovery", self._metadata),
            route("GET", "/.well-known/oauth-authorization-server", "discovery-oauth", self._metadata),
            route("GET", "/oauth2/jwks", "jwks", self._jwks),
        ]

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata; `registration_endpoint` only while registration is open."""
        doc: dict[str, Any] = {
            "issuer": self._tokens.issuer,
            "authorization_endpoint": f"{self._base}/oauth2/authorize",
            "token_endpoint": f"{self._base}/oauth2/token",
            "jwks_uri": f"{self._base}/oauth2/jwks",
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "subject_types_supported": ["public"],
            "scopes_supported": ["openid"],
        }
        if self._registration.enabled:
            doc["registration_endpoint"] = f"{self._base}/oauth2/register"
        return doc

    async def _metadata(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        return _json(self.metadata())

    async def _jwks(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        return _json({"keys": [self._tokens.key.jwk()]})

    async def token(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        try:
            return await self._token(request, entry)
        except OAuthError as exc:
            exc.realm = self._domain
            raise

    async def _token(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        if not request.content_type.startswith("application/x-www-form-urlencoded"):
            raise OAuthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        posted = await request.post()
        for key in ("grant_type", "code", "code_verifier", "redirect_uri", "client_id", "resource"):
            if len(posted.getall(key, [])) > 1:
                raise OAuthError(400, "invalid_request", f"parameter {key} is given more than once")
        form = {k: v for k, v in posted.items() if isinstance(v, str)}
        if form.get("grant_type") == "authorization_code":
            return await self._code_grant(request, form, entry)
        client_id, secret = self._client_auth(request, form)
        entry["credential"] = client_id[:64]
        if form.get("grant_type") != "client_credentials":
            raise OAuthError(
                400, "unsupported_grant_type", "grant_type must be client_credentials or authorization_code"
            )
        credential = self._verify_client(client_id, secret)
        entry["user"] = credential.spec.user
        audience = self._resource(form["resource"]) if "resource" in form else None
        try:
            session = await self._sessions.open(
                credential.spec.user, SessionType.CLIENTLESS, CLIENTLESS_TTL, credential=credential
            )
        except Unavailable as exc:
            raise OAuthError(503, "temporarily_unavailable", "try again shortly", str(exc)) from None
        ttl = max(1.0, (session.spec.expires_at - datetime.now(UTC)).total_seconds())
        token, _ = self._tokens.issue(session.metadata.name, credential.spec.user, ttl, audience=audience)
        entry["session"] = session.metadata.name
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl)}
        if form.get("scope"):
            body["scope"] = form["scope"]
        return _json(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _resource(self, value: str) -> str:
        audience = mcp_resource(self._cache, self._domain, value)
        if audience is None:
            raise OAuthError(400, "invalid_target", "resource is not the endpoint of an MCP Service of this cluster")
        return audience

    async def _code_grant(self, request: web.Request, form: dict[str, str], entry: dict[str, Any]) -> web.Response:
        """RFC 6749 §4.1.3 for a public client, with PKCE (RFC 7636) and the resource (RFC 8707)."""
        client_id = form.get("client_id", "")
        entry["client"] = client_id[:64]
        if request.headers.get("Authorization") or "client_secret" in form:
            raise OAuthError(401, "invalid_client", "registered MCP clients are public: send client_id, no secret")
        client = self._cache.get("OAuthClient", client_id) if client_id else None
        if client is None and client_id:
            try:
                client = await self._store.get("OAuthClient", client_id)
            except (NotFound, ValueError):
                client = None
        if not isinstance(client, OAuthClient):
            raise OAuthError(401, "invalid_client", "client authentication failed", "unknown client_id")
        for field in ("code", "redirect_uri", "code_verifier"):
            if not form.get(field):
                raise OAuthError(400, "invalid_request", f"{field} is required")
        record = await self._redeem(form["code"])
        spec = record.spec
        problem = None
        if spec.expires_at <= datetime.now(UTC):
            problem = "the code expired"
        elif spec.client != client_id:
            problem = "the code was issued to another client"
        elif spec.redirect_uri != form["redirect_uri"]:
            problem = "redirect_uri is not the one of the authorization request"
        elif not pkce_matches(spec.code_challenge, form["code_verifier"]):
            problem = "code_verifier does not match the code_challenge"
        if problem is not None:
            raise OAuthError(400, "invalid_grant", problem)
        if "resource" in form and self._resource(form["resource"]) != spec.resource:
            raise OAuthError(400, "invalid_target", "resource is not the one the code was issued for")
        session = self._cache.get("Session", spec.session)
        user = self._cache.get("User", spec.user)
        if not isinstance(session, Session) or session.spec.user != spec.user:
            raise OAuthError(400, "invalid_grant", "the sign-in the code came from has ended")
        if not isinstance(user, User) or user.spec.is_disabled or user.spec.type is not UserType.HUMAN:
            raise OAuthError(400, "invalid_grant", "the user is missing, disabled or not HUMAN")
        entry.update(user=spec.user, session=spec.session)
        remaining = (session.spec.expires_at - datetime.now(UTC)).total_seconds()
        ttl = min(CODE_GRANT_TOKEN_TTL, remaining)
        if ttl < 1:
            raise OAuthError(400, "invalid_grant", "the sign-in the code came from has ended")
        token, _ = self._tokens.issue(spec.session, spec.user, ttl, audience=spec.resource)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl)}
        if spec.scope:
            body["scope"] = spec.scope
        return _json(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def _redeem(self, code: str) -> AuthorizationCode:
        """The code's record, deleted from the store: a second redemption anywhere finds nothing."""
        name = code_name(code)
        try:
            record = await self._store.get("AuthorizationCode", name)
            await self._store.commit([Delete("AuthorizationCode", name, record.metadata.resource_version)])
        except (NotFound, Conflict):
            raise OAuthError(400, "invalid_grant", "the code is unknown, expired or already used") from None
        if not isinstance(record, AuthorizationCode):
            raise OAuthError(400, "invalid_grant", "the code is unknown, expired or already used")
        return record

    def _client_auth(self, request: web.Request, form: dict[str, str]) -> tuple[str, str]:
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
