"""The `wardgate` client's endpoints on `https://<domain>/v1/client/...` (routes of the bare-domain app).

    login    AUTH_TOKEN credential ─▶ SessionService.open (CLIENT; the credential's oldest Sessions beyond its
             cap are evicted) ─▶ access + refresh tokens
    refresh  refresh token ─▶ the Session still stands ─▶ a new access token
    connect  Bearer ─▶ AddressAllocator.bind(session, WireGuard key) ─▶ addresses, network, nodes
             (the node agents see the Session change on their watch stream and add the peer)
    disconnect (key cleared: the peer goes; the addresses stay with the Session) · logout (Session revoked)
    session, services: what `wardgate status` shows

Refresh tokens are JWTs of a second TokenService whose issuer and audience differ from the access tokens',
so neither is accepted as the other; revoking the Session ends both. Every call writes one access-log line.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from wardgate.cluster.api.errors import error_response
from wardgate.cluster.api.site_log import route
from wardgate.cluster.errors import Invalid, Unauthenticated, Unavailable
from wardgate.cluster.identity import credentials
from wardgate.cluster.identity.addresses import AddressAllocator, TunnelSettings, session_is_live
from wardgate.cluster.identity.authenticate import Authenticator, Identity
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.identity.tokens import TokenService
from wardgate.cluster.resources.credential import Credential, CredentialType
from wardgate.cluster.resources.node import Node
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.resources.user import User
from wardgate.cluster.resources.wire import (
    ConnectRequest,
    ConnectResponse,
    LoginRequest,
    NodePeer,
    RefreshRequest,
    ServiceEntry,
    ServiceList,
    SessionInfo,
    TokenGrant,
)
from wardgate.cluster.store.cache import ResourceCache

M = TypeVar("M", bound=BaseModel)
PREFIX = "/v1/client"
MAX_BODY = 64 * 1024


def _json(body: BaseModel) -> web.Response:
    return web.Response(
        body=body.model_dump_json().encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class ClientAccess:
    """Handlers for the user's client (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        cache: ResourceCache,
        authenticator: Authenticator,
        tokens: TokenService,
        refresh_tokens: TokenService,
        sessions: SessionService,
        allocator: AddressAllocator,
        settings: TunnelSettings,
        node: str,
    ) -> None:
        self._domain = domain
        self._cache = cache
        self._auth = authenticator
        self._tokens = tokens
        self._refresh = refresh_tokens
        self._sessions = sessions
        self._allocator = allocator
        self._settings = settings
        self._node = node

    def routes(self) -> list[web.RouteDef]:
        return [
            route("POST", f"{PREFIX}/login", "client-login", self._login),
            route("POST", f"{PREFIX}/refresh", "client-refresh", self._refresh_token),
            route("POST", f"{PREFIX}/connect", "client-connect", self._connect),
            route("POST", f"{PREFIX}/disconnect", "client-disconnect", self._disconnect),
            route("POST", f"{PREFIX}/logout", "client-logout", self._logout),
            route("GET", f"{PREFIX}/session", "client-session", self._session),
            route("GET", f"{PREFIX}/services", "client-services", self._services),
        ]

    async def _body(self, request: web.Request, model: type[M]) -> M:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise Invalid("the request body is too large")
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise Invalid("the request body is too large")
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            ]
            raise Invalid("invalid request body: " + "; ".join(problems), problems) from None

    def _caller(self, request: web.Request, entry: dict[str, Any]) -> Session:
        """The caller's CLIENT Session, from its Bearer access token."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected `Authorization: Bearer <access token>` (run `wardgate login`)")
        identity: Identity = self._auth.from_token(token.strip())
        entry["user"] = identity.user.metadata.name
        if identity.session is None or identity.session.spec.type is not SessionType.CLIENT:
            raise Unauthenticated("this call needs the access token of a CLIENT session (from `wardgate login`)")
        entry["session"] = identity.session.metadata.name
        return identity.session

    def _grant(self, session: Session, with_refresh: bool) -> TokenGrant:
        remaining = (session.spec.expires_at - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            raise Unauthenticated(f"session {session.metadata.name!r} expired")
        ttl = max(1.0, min(self._settings.access_token_ttl, remaining))
        access, access_expires = self._tokens.issue(session.metadata.name, session.spec.user, ttl)
        refresh = None
        if with_refresh:
            refresh, _ = self._refresh.issue(session.metadata.name, session.spec.user, max(1.0, remaining))
        return TokenGrant(
            session=session.metadata.name,
            user=session.spec.user,
            session_expires_at=session.spec.expires_at,
            access_token=access,
            access_token_expires_at=datetime.fromtimestamp(access_expires, UTC),
            refresh_token=refresh,
        )

    async def _login(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        body = await self._body(request, LoginRequest)
        name = credentials.credential_name(body.auth_token)
        entry["credential"] = name
        found = self._cache.get("Credential", name) if name else None
        credential = found if isinstance(found, Credential) else None
        problem = credentials.verify(credential, body.auth_token)
        if problem is None and credential is not None and credential.spec.type is not CredentialType.AUTH_TOKEN:
            problem = f"credential type {credential.spec.type.value} is not AUTH_TOKEN"
        user = self._cache.get("User", credential.spec.user) if credential is not None else None
        if problem is None and (not isinstance(user, User) or user.spec.is_disabled):
            problem = "user missing or disabled"
        if problem is not None or credential is None:
            entry["reason"] = problem
            return error_response(
                401, "unauthenticated", "the auth token is not valid (ask your administrator for a new one)"
            )
        entry["user"] = credential.spec.user
        stored = await self._sessions.open(
            credential.spec.user,
            SessionType.CLIENT,
            timedelta(seconds=self._settings.session_ttl),
            credential=credential,
        )
        entry["session"] = stored.metadata.name
        return _json(self._grant(stored, with_refresh=True))

    async def _refresh_token(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        body = await self._body(request, RefreshRequest)
        claims = self._refresh.verify(body.refresh_token)
        entry.update(user=claims.user, session=claims.session)
        # The refresh token names a Session; the Authenticator's checks (revoked, expired, user, credential)
        # are the same for it as for an access token, so run them through a fresh access token.
        session = self._cache.get("Session", claims.session)
        if not isinstance(session, Session) or not session_is_live(session):
            raise Unauthenticated(f"session {claims.session!r} was revoked or has ended")
        grant = self._grant(session, with_refresh=False)
        self._auth.from_token(grant.access_token)
        return _json(grant)

    async def _connect(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        session = self._caller(request, entry)
        body = await self._body(request, ConnectRequest)
        nodes = self._nodes()
        if not nodes:
            raise Unavailable("no node agent has registered with the cluster yet: start `wardgate-agent` on the node")
        bound = await self._allocator.bind(session.metadata.name, body.wg_public_key)
        assert bound.spec.tunnel_ipv4 is not None and bound.spec.tunnel_ipv6 is not None
        entry["tunnelIpv4"] = bound.spec.tunnel_ipv4
        return _json(
            ConnectResponse(
                session=bound.metadata.name,
                user=bound.spec.user,
                expires_at=bound.spec.expires_at,
                tunnel_ipv4=bound.spec.tunnel_ipv4,
                tunnel_ipv6=bound.spec.tunnel_ipv6,
                network=self._settings.network(self._domain),
                nodes=nodes,
            )
        )

    def _nodes(self) -> list[NodePeer]:
        nodes = [n for n in self._cache.list_kind("Node") if isinstance(n, Node)]
        nodes.sort(key=lambda n: n.metadata.name != self._node)  # this node first, then by name
        return [
            NodePeer(
                name=n.metadata.name,
                wg_public_key=n.spec.wg_public_key,
                listen_port=n.spec.listen_port,
                endpoint=n.spec.endpoint,
            )
            for n in nodes
        ]

    async def _disconnect(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        session = self._caller(request, entry)
        await self._allocator.bind(session.metadata.name, None)
        return web.json_response({"session": session.metadata.name, "connected": False})

    async def _logout(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        session = self._caller(request, entry)
        await self._sessions.revoke(session.metadata.name)
        return web.json_response({"session": session.metadata.name, "deleted": True})

    async def _session(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        session = self._caller(request, entry)
        spec = session.spec
        return _json(
            SessionInfo(
                session=session.metadata.name,
                user=spec.user,
                type=spec.type.value,
                expires_at=spec.expires_at,
                tunnel_ipv4=spec.tunnel_ipv4,
                tunnel_ipv6=spec.tunnel_ipv6,
                wg_public_key=spec.wg_public_key,
                nodes=self._nodes(),
            )
        )

    async def _services(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        self._caller(request, entry)
        network = self._settings.network(self._domain)
        port = "" if network.http_port == 80 else f":{network.http_port}"
        services = [
            ServiceEntry(
                name=s.metadata.name,
                url=f"http://{s.metadata.name}.{network.dns_zone}{port}",
                is_public=s.spec.is_public,
            )
            for s in self._cache.list_kind("Service")
            if isinstance(s, Service)
        ]
        return _json(ServiceList(services=services))
