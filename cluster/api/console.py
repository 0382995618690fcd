"""The console on `https://<domain>/console`: server-rendered pages behind the browser login.

    GET /console ─▶ the `wardgate_session` cookie (identity.authenticate; none or dead: 302 to /login)
        ─▶ the Services `admit` lets the caller reach, with SDK snippets · their Sessions and devices
        ─▶ their usage (the ledger) per Service and model · their Quotas' live counters
    GET /console/admin ─▶ as above, then AdminAccess as for `GET /api/v1/usage` on the admin API
        ─▶ usage by user, group, model and Service · refusals of the last hour (access log) · nodes, peers
        ─▶ every live Session
    POST /console/sessions/{name}/revoke ─▶ same-origin (Origin, Sec-Fetch-Site) and the CSRF field
        (HMAC of the session cookie) ─▶ the caller's own Session, or AdminAccess as for
        `DELETE /api/v1/sessions/{name}` ─▶ SessionService.revoke ─▶ 303 back
    GET /console/console.css (the only asset; no script anywhere, CSP `default-src 'none'; style-src 'self'`)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from wardgate.cluster.api import console_data as data
from wardgate.cluster.api import console_view as view
from wardgate.cluster.api.auth import AdminPolicy
from wardgate.cluster.api.site_log import Refused, route
from wardgate.cluster.authorize.state import GatewayState
from wardgate.cluster.errors import Forbidden, Unauthenticated, Unavailable
from wardgate.cluster.identity.authenticate import SESSION_COOKIE, Authenticator, Identity, session_cookie
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.resources.wire import NodeStatus
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.usage.ledger import Ledger
from wardgate.cluster.usage.meter import Meter

STYLESHEET = (Path(__file__).parent / "console_assets" / "console.css").read_bytes()
BACK = ("/console", "/console/admin")


class ConsoleRefused(Refused):
    """A refused console request: an HTML page (or a redirect to sign in)."""

    def __init__(self, status: int, reason: str, text: str = "", location: str = "") -> None:
        super().__init__(reason)
        self.status, self.text, self.location = status, text, location

    def response(self) -> web.StreamResponse:
        if self.location:
            return web.Response(status=302, headers={"Location": self.location, "Cache-Control": "no-store"})
        title = {403: "Not allowed", 404: "Not found"}.get(self.status, "Something went wrong")
        return view.respond(self.status, view.message(title, self.text or title, [("/console", "Back to the console")]))


class Console:
    """The console's routes (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        public_port: int,
        tunnel_zone: str,
        tunnel_port: int,
        cache: ResourceCache,
        authenticator: Authenticator,
        state: Callable[[], GatewayState],
        admin: AdminPolicy,
        sessions: SessionService,
        ledger: Ledger,
        meter: Meter,
        access_log: Path | None,
        node_status: Callable[[], Mapping[str, NodeStatus]],
    ) -> None:
        self._domain = domain.lower().rstrip(".")
        self._base = base_url.rstrip("/")
        self._public_port, self._tunnel_zone, self._tunnel_port = public_port, tunnel_zone, tunnel_port
        self._cache = cache
        self._auth = authenticator
        self._state = state
        self._admin = admin
        self._sessions = sessions
        self._ledger = ledger
        self._meter = meter
        self._access_log = access_log
        self._node_status = node_status

    def routes(self) -> list[web.RouteDef]:
        return [
            route("GET", "/console", "console", self._overview),
            route("GET", "/console/admin", "console-admin", self._admin_page),
            route("POST", "/console/sessions/{name}/revoke", "console-revoke", self._revoke),
            route("GET", "/console/console.css", "console-asset", self._stylesheet),
        ]

    async def _stylesheet(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        return web.Response(
            body=STYLESHEET,
            content_type="text/css",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    def _caller(self, request: web.Request, entry: dict[str, Any]) -> tuple[Identity, str]:
        """The signed-in caller and their cookie; no cookie, or a dead one: a redirect to the login."""
        back = self._base + (request.path if request.path in BACK else "/console")
        sign_in = f"{self._base}/login?rd={quote(back, safe='')}"
        try:
            cookie = session_cookie(request.headers.getall("Cookie", []))
            if cookie is None:
                raise ConsoleRefused(302, "not signed in", location=sign_in)
            identity = self._auth.from_token(cookie)
        except Unauthenticated as exc:
            raise ConsoleRefused(302, f"session cookie refused ({exc})", location=sign_in) from None
        entry["user"] = identity.user.metadata.name
        if identity.session is not None:
            entry["session"] = identity.session.metadata.name
        return identity, cookie

    def _may_admin(self, identity: Identity, request: web.Request, method: str, path: str) -> bool:
        """What AdminAccess decides for the admin API request the console stands in for."""
        try:
            self._admin.authorize_admin(identity, method, URL(path), {}, request.remote or "")
        except Forbidden:
            return False
        return True

    @staticmethod
    def _csrf(cookie: str) -> str:
        """The form token: bound to the session cookie (HttpOnly, never sent to upstreams), so a page on
        another origin, subdomains included, can neither read nor compute it."""
        return hmac.new(cookie.encode(), b"wardgate-console-csrf", hashlib.sha256).hexdigest()

    def _range(self, request: web.Request) -> tuple[str, float, float]:
        name = request.query.get("range", "24h")
        if name not in data.RANGES:
            name = "24h"
        length, bucket = data.RANGES[name]
        return name, length, bucket

    async def _overview(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        identity, cookie = self._caller(request, entry)
        user = identity.user.metadata.name
        state = self._state()
        services = data.reachable(
            state,
            identity,
            domain=self._domain,
            public_port=self._public_port,
            tunnel_zone=self._tunnel_zone,
            tunnel_port=self._tunnel_port,
            ip=request.remote or "",
        )
        clients = data.oauth_clients(self._cache, user)
        parts = [
            '<section aria-labelledby="services"><h2 id="services">Services you can use</h2>',
            f"<p>Sign in to the token endpoint <code>{escape(self._base)}/oauth2/token</code> with an OAuth2 "
            f"client of yours ({escape(', '.join(clients) or 'none yet')}), then call the Service.</p>",
        ]
        for service in services:
            reach = "public (over the internet)" if service.is_public else "private (through the wardgate client)"
            parts.append(
                f'<article class="service"><h3>{escape(service.name)}</h3><dl>'
                f"<dt>Base URL</dt><dd><code>{escape(service.public_url or service.tunnel_url)}/v1</code></dd>"
                f"<dt>Access</dt><dd>{reach}</dd></dl>"
                f"<details><summary>How to call {escape(service.name)}</summary>"
                f"{view.snippets(self._base, service, clients[0] if clients else None)}</details></article>"
            )
        if not services:
            parts.append("<p>No Service admits you yet. Ask your administrator.</p>")
        parts.append("</section>")
        parts.append(self._sessions_section(data.sessions_of(self._cache, user), identity, cookie, "/console", False))
        name, length, bucket = self._range(request)
        now = time.time()
        rows = await self._ledger.history(now - length, bucket, user)
        parts.append(
            '<section aria-labelledby="usage"><h2 id="usage">Your usage</h2>'
            + view.range_form("/console", name, data.RANGES)
        )
        for by, label in (("service", "Service"), ("model", "model")):
            series = data.series(rows, by, now - length, bucket, now)
            parts.append(view.chart(f"Your tokens per {label}, last {name}", series))
            parts.append(view.totals_table(f"Your usage per {label}, last {name}", series, state.usage.currency))
        parts.append("</section>")
        parts.append(await self._quota_section(state, identity))
        admin = self._may_admin(identity, request, "GET", "/api/v1/usage")
        html = view.layout("My access", "".join(parts), user=user, admin=admin, current="/console")
        return view.respond(200, html)

    def _sessions_section(
        self, sessions: list[Session], identity: Identity, cookie: str, back: str, everyone: bool
    ) -> str:
        csrf = self._csrf(cookie)
        mine = identity.session.metadata.name if identity.session is not None else None
        rows = []
        for s in sessions:
            spec = s.spec
            kind = "browser" if spec.type is SessionType.CLIENTLESS else "wardgate client"
            if s.metadata.name == mine:
                kind += " (this one)"
            device = (
                f"WireGuard key {escape(spec.wg_public_key[:12])}…, {escape(spec.tunnel_ipv4 or '')}"
                if spec.wg_public_key
                else "not connected"
                if spec.type is SessionType.CLIENT
                else "-"
            )
            label = f"Revoke session {s.metadata.name} of {spec.user}"
            row = [
                escape(s.metadata.name),
                escape(kind),
                device,
                escape(spec.credential or "-"),
                escape(view.when(spec.expires_at)),
                view.revoke_form(s.metadata.name, csrf, back, label),
            ]
            rows.append([escape(spec.user), *row] if everyone else row)
        headers = ["Session", "Kind", "Device", "Credential", "Expires", "Action"]
        title = "Live Sessions" if everyone else "Your Sessions and devices"
        return (
            f'<section aria-labelledby="sessions"><h2 id="sessions">{title}</h2>'
            "<p>Revoking a Session signs that browser or device out at once; its next request fails.</p>"
            + view.table(title, ["User", *headers] if everyone else headers, rows, raw=True)
            + "</section>"
        )

    async def _quota_section(self, state: GatewayState, identity: Identity) -> str:
        head = '<section aria-labelledby="quotas"><h2 id="quotas">Your Quotas</h2>'
        try:
            found = await data.quotas(self._meter, state, self._cache, identity)
        except Unavailable as exc:
            return head + f"<p>The quota counters cannot be read right now ({escape(str(exc))}).</p></section>"
        rows = [
            [
                escape(q.quota),
                escape(q.key),
                escape(q.limit),
                f"{view.number(q.used)} of {view.number(q.maximum)}",
                f'<meter min="0" max="1" value="{min(q.fraction, 1):.4f}" aria-label="{escape(q.quota)} '
                f'{escape(q.limit)} used">{q.fraction:.0%}</meter> {q.fraction:.0%}',
                view.duration(q.resets_in),
            ]
            for q in found
        ]
        headers = ["Quota", "Counted as", "Limit", "Used", "How close", "Resets in"]
        return head + view.table("Your Quotas", headers, rows, raw=True) + "</section>"

    async def _admin_page(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        identity, cookie = self._caller(request, entry)
        if not self._may_admin(identity, request, "GET", "/api/v1/usage"):
            raise ConsoleRefused(403, "console admin denied by the admin policy", "This page is for administrators.")
        state = self._state()
        name, length, bucket = self._range(request)
        now = time.time()
        rows = await self._ledger.history(now - length, bucket)
        parts = [
            '<section aria-labelledby="usage"><h2 id="usage">Usage</h2>',
            view.range_form("/console/admin", name, data.RANGES),
        ]
        for by, label in (("user", "user"), ("group", "group"), ("model", "model"), ("service", "Service")):
            series = data.series(rows, by, now - length, bucket, now)
            parts.append(f"<h3>By {label}</h3>" + view.chart(f"Tokens per {label}, last {name}", series))
            parts.append(view.totals_table(f"Usage per {label}, last {name}", series, state.usage.currency))
        parts.append("</section>")
        refused = await asyncio.to_thread(data.refusals, self._access_log, now)
        parts.append(
            '<section aria-labelledby="refusals"><h2 id="refusals">Refused in the last hour</h2>'
            + view.table(
                f"Refused requests ({len(refused)}, newest first)",
                ["Time (UTC)", "User", "Host", "Request", "Status", "Reason"],
                [
                    [
                        str(e.get("time", ""))[11:19],
                        str(e.get("user", "-")),
                        str(e.get("host", e.get("service", "-"))),
                        f"{e.get('method', '')} {str(e.get('path', ''))[:120]}",
                        str(e.get("status", "")),
                        str(e.get("reason", ""))[:300],
                    ]
                    for e in refused
                ],
            )
            + "</section>"
        )
        parts.append(self._nodes_section())
        everyone = data.sessions_of(self._cache, None)
        parts.append(self._sessions_section(everyone, identity, cookie, "/console/admin", True))
        user = identity.user.metadata.name
        html = view.layout("Administration", "".join(parts), user=user, admin=True, current="/console/admin")
        return view.respond(200, html)

    def _nodes_section(self) -> str:
        nodes, peers = data.nodes_and_peers(self._cache, self._node_status)
        node_rows = [
            [
                n.metadata.name,
                n.spec.endpoint or f"(the cluster's host):{n.spec.listen_port}",
                n.spec.wg_public_key[:16] + "…",
                "yes" if reporting else "no report to this worker in the last minute",
            ]
            for n, reporting in nodes
        ]
        peer_rows = [
            [
                p.user,
                p.session,
                p.public_key[:16] + "…",
                p.tunnel_ipv4 or "-",
                ", ".join(f"{node}: {view.when(at) if at else 'no handshake'}" for node, at in p.handshakes.items())
                or "not reported",
            ]
            for p in peers
        ]
        return (
            '<section aria-labelledby="nodes"><h2 id="nodes">Nodes and WireGuard peers</h2>'
            + view.table("Nodes", ["Node", "Endpoint", "WireGuard key", "Agent reporting"], node_rows)
            + view.table("WireGuard peers", ["User", "Session", "Key", "Tunnel address", "Last handshake"], peer_rows)
            + "</section>"
        )

    def _same_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        if (origin is not None and origin != self._base) or (site is not None and site != "same-origin"):
            raise ConsoleRefused(403, f"cross-origin form post (Origin {origin!r}, Sec-Fetch-Site {site!r})")

    async def _revoke(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        identity, cookie = self._caller(request, entry)
        self._same_origin(request)
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), self._csrf(cookie).encode()):
            raise ConsoleRefused(403, "CSRF token missing or wrong", "The form expired: reload the page and retry.")
        name = request.match_info["name"]
        entry["target"] = name[:63]
        session = self._cache.get("Session", name)
        not_found = ConsoleRefused(404, "", "That Session has already ended.")
        if not isinstance(session, Session):
            not_found.reason = "no such session"
            raise not_found
        if session.spec.user != identity.user.metadata.name and not self._may_admin(
            identity, request, "DELETE", f"/api/v1/sessions/{name}"
        ):
            not_found.reason = "another user's session; admin policy denies DELETE"
            raise not_found
        await self._sessions.revoke(name)
        if identity.session is not None and identity.session.metadata.name == name:
            response = view.respond(
                200, view.message("Signed out", "This Session is revoked.", [("/login", "Sign in again")])
            )
            response.del_cookie(
                SESSION_COOKIE, domain=self._domain, path="/", secure=True, httponly=True, samesite="Lax"
            )
            return response
        back = str(form.get("back", ""))
        return web.Response(
            status=303,
            headers={"Location": back if back in BACK else "/console", "Cache-Control": "no-store"},
        )
