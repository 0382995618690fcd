"""The authorization endpoint and dynamic client registration for interactive MCP clients, on `https://<domain>`.

    POST /oauth2/register (RFC 7591) ─▶ the `[oauth.registration]` policy (open? this redirect URI? room?)
        ─▶ an OAuthClient in the store (public: no secret), enforced on every worker ─▶ 201 client information
    GET /oauth2/authorize?response_type=code&client_id&redirect_uri&code_challenge&code_challenge_method=S256
            &resource&state[&scope]
        ─▶ client_id registered, redirect_uri exactly one of its own; otherwise a page, never a redirect
        ─▶ PKCE S256 and the resource (an MCP Service's endpoint) are required; otherwise an error to the client
        ─▶ the browser's Wardgate sign-in (cookie); none yet: 302 to /login?rd=<this request>, the browser
           login of api.login, which comes back here
        ─▶ an AuthorizationCode (hash of the code; 60 s; the user's browser Session) in the store
        ─▶ 302 to redirect_uri with code, state and iss (RFC 9207)

The code itself is never stored or logged; api.oauth redeems it once. A registered client grants nothing: the
token it gets is the user's, for one MCP Service, and the Service's policies decide every call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from wardgate.cluster.api.login import BrowserLogin, page
from wardgate.cluster.api.oauth import mcp_resource
from wardgate.cluster.api.site_log import Refused, oauth_error, route
from wardgate.cluster.errors import NotFound, Unauthenticated, Unavailable
from wardgate.cluster.identity.authenticate import Authenticator, session_cookie
from wardgate.cluster.identity.oauth_clients import (
    MAX_CODES,
    RegistrationRefused,
    RegistrationSettings,
    challenge_problem,
    client_document,
    new_code,
    plan_client,
)
from wardgate.cluster.identity.oidc import with_query
from wardgate.cluster.resources.oauth_client import OAuthClient
from wardgate.cluster.resources.user import UserType
from wardgate.cluster.store import Create, Store
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.propagation import Propagation

MAX_REGISTRATION_BODY = 16 * 1024
_SINGLE = ("response_type", "client_id", "redirect_uri", "code_challenge", "code_challenge_method", "state", "resource")


class PageRefused(Refused):
    """An authorization request that cannot be sent back to the client (unknown client or redirect URI):
    RFC 6749 §4.1.2.1 says tell the user, never redirect."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)

    def response(self) -> web.StreamResponse:
        return page(400, "Authorization failed", "The application's sign-in request is invalid: " + self.reason)


class ClientRefused(Refused):
    """An authorization error returned to the client's registered redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, redirect_uri: str, state: str | None, issuer: str, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        params = {"error": error, "error_description": description}
        if state is not None:
            params["state"] = state
        params["iss"] = issuer
        self.location = with_query(redirect_uri, params)

    def response(self) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": self.location, "Cache-Control": "no-store"})


class RegisterRefused(Refused):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error = status, error

    def response(self) -> web.StreamResponse:
        return oauth_error(self.status, self.error, self.reason)


class AuthorizationEndpoint:
    """`/oauth2/authorize` and `/oauth2/register` (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        issuer: str,
        cache: ResourceCache,
        store: Store,
        propagation: Propagation,
        authenticator: Authenticator,
        login: BrowserLogin,
        registration: RegistrationSettings,
    ) -> None:
        self._domain = domain.lower().rstrip(".")
        self._base = base_url.rstrip("/")
        self._issuer = issuer
        self._cache = cache
        self._store = store
        self._propagation = propagation
        self._auth = authenticator
        self._login = login
        self._registration = registration

    def routes(self) -> list[web.RouteDef]:
        return [
            route("GET", "/oauth2/authorize", "authorize", self._authorize),
            route("POST", "/oauth2/register", "register", self._register),
        ]

    async def _client(self, client_id: str) -> OAuthClient | None:
        """The registered client; the store is asked when this node's cache does not have it (yet)."""
        found = self._cache.get("OAuthClient", client_id)
        if found is None:
            try:
                found = await self._store.get("OAuthClient", client_id)
            except NotFound:
                return None
        return found if isinstance(found, OAuthClient) else None

    async def _authorize(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        query = request.query
        for name in _SINGLE:
            if len(query.getall(name, [])) > 1:
                raise PageRefused(f"parameter {name} is given more than once")
        client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
        entry["client"] = client_id[:64]
        client = await self._client(client_id) if client_id else None
        if client is None:
            raise PageRefused("client_id is missing or not a registered client")
        if redirect_uri not in client.spec.redirect_uris:
            raise PageRefused("redirect_uri is missing or not one the client registered")
        state = query.get("state")

        def refuse(error: str, description: str) -> ClientRefused:
            return ClientRefused(redirect_uri, state, self._issuer, error, description)

        if query.get("response_type") != "code":
            raise refuse("unsupported_response_type", "response_type must be code")
        problem = challenge_problem(query.get("code_challenge"), query.get("code_challenge_method"))
        if problem is not None:
            raise refuse("invalid_request", problem)
        if "resource" not in query:
            raise refuse("invalid_target", "resource is required: the MCP Service's endpoint (RFC 8707)")
        resource = mcp_resource(self._cache, self._domain, query["resource"])
        if resource is None:
            raise refuse("invalid_target", "resource is not the endpoint of an MCP Service of this cluster")
        identity = self._signed_in(request, entry)
        if identity is None:
            login = self._login.login_url()
            if login is None:
                raise refuse("access_denied", "no IdentityProvider is configured for sign-in")
            entry["note"] = "not signed in: sent to the browser login"
            location = with_query(login, {"rd": self._base + request.path_qs})
            return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
        user, session = identity
        if len(self._cache.list_kind("AuthorizationCode")) >= MAX_CODES:
            raise refuse("temporarily_unavailable", "too many sign-ins in progress; try again shortly")
        code, record = new_code(
            client=client.metadata.name,
            user=user,
            session=session,
            redirect_uri=redirect_uri,
            challenge=str(query["code_challenge"]),
            resource=resource,
            scope=query.get("scope", "")[:1024],
            now=datetime.now(UTC),
        )
        stored, *_ = await self._store.commit([Create(record)])
        assert stored is not None
        try:
            await self._propagation.settle(int(stored.metadata.resource_version or 0))
        except Unavailable:
            raise refuse("temporarily_unavailable", "try again shortly") from None
        params = {"code": code, **({"state": state} if state is not None else {}), "iss": self._issuer}
        return web.Response(
            status=302, headers={"Location": with_query(redirect_uri, params), "Cache-Control": "no-store"}
        )

    def _signed_in(self, request: web.Request, entry: dict[str, Any]) -> tuple[str, str] | None:
        """(user, session) of the browser's sign-in: a HUMAN user's browser-login Session; else None."""
        try:
            cookie = session_cookie(request.headers.getall("Cookie", []))
            identity = self._auth.from_token(cookie) if cookie else None
        except Unauthenticated as exc:
            entry["signIn"] = f"cookie refused ({exc})"
            return None
        if identity is None or identity.session is None or identity.credential is not None:
            return None
        if identity.user.spec.type is not UserType.HUMAN:
            entry["signIn"] = "not a HUMAN user"
            return None
        entry.update(user=identity.user.metadata.name, session=identity.session.metadata.name)
        return identity.user.metadata.name, identity.session.metadata.name

    async def _register(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        if not request.content_type.startswith("application/json"):
            raise RegisterRefused(400, "invalid_client_metadata", "the body must be application/json")
        raw = await request.content.read(MAX_REGISTRATION_BODY + 1)
        if len(raw) > MAX_REGISTRATION_BODY:
            raise RegisterRefused(400, "invalid_client_metadata", "the body is larger than 16 KiB")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RegisterRefused(400, "invalid_client_metadata", "the body is not JSON") from None
        registered = len(self._cache.list_kind("OAuthClient"))
        try:
            client = plan_client(self._registration, body, registered)
        except RegistrationRefused as exc:
            raise RegisterRefused(exc.status, exc.error, exc.description) from None
        stored, *_ = await self._store.commit([Create(client)])
        assert isinstance(stored, OAuthClient)
        try:
            await self._propagation.settle(int(stored.metadata.resource_version or 0))
        except Unavailable:
            raise RegisterRefused(503, "temporarily_unavailable", "registered; try again shortly") from None
        entry["client"] = stored.metadata.name
        return web.Response(
            status=201,
            body=orjson.dumps(client_document(stored)),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
