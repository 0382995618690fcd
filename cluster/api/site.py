"""The cluster's own site on the bare domain (`https://<domain>/...`) and the adapter that serves it on the public
listener.

    public listener (low-level web.Server) ─▶ Gateway.handle: Host is <domain> ─▶ SiteApp(request)
        ─▶ the app's own Request over the same connection ─▶ router
        ─▶ access_log_middleware (one line) ─▶ refusal_middleware (the endpoint's dialect) ─▶ route
    routes: /oauth2/token, discovery, /oauth2/jwks (api.oauth) · /login, /login/callback, /logout, / (api.login)
            · /v1/client/... (api.user) · /console, /console/admin (api.console) · /healthz

Requests for Service hosts never come here: the Gateway tells the bare domain apart by Host first, so the
adapter adds nothing to their cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from wardgate.cluster.api.site_log import DOMAIN, access_log_middleware, refusal_middleware, route
from wardgate.cluster.api.state import ACCESS_LOG, NODE
from wardgate.cluster.observability.accesslog import AccessLog

MAX_BODY = 64 * 1024
"""Token forms and client requests are small; a larger body is refused before it is read."""


class Endpoints(Protocol):
    """A group of bare-domain endpoints (token, browser login, client access)."""

    def routes(self) -> list[web.RouteDef]: ...


async def _healthz(request: web.Request, entry: object) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def make_site_app(*, domain: str, node: str, access_log: AccessLog, endpoints: Sequence[Endpoints]) -> web.Application:
    app = web.Application(middlewares=[access_log_middleware, refusal_middleware], client_max_size=MAX_BODY)
    app[DOMAIN] = domain
    app[NODE] = node
    app[ACCESS_LOG] = access_log
    app.router.add_routes([route("GET", "/healthz", "healthz", _healthz)])
    for group in endpoints:
        app.router.add_routes(group.routes())
    return app


class SiteApp:
    """Serves an Application behind the `site(request)` callable of the public listener's Gateway.

    The listener's web.Server made a BaseRequest for the Gateway; the app's router and middlewares need
    the web.Request its own factory makes (match info, the app, its body limit) over the same message,
    payload, connection and writer, which is what `__call__` builds. The app runs through an AppRunner
    with no site: `start` freezes it and runs its startup, `aclose` its cleanup. `on_response_prepare`
    signals do not fire (the response is prepared against the listener's request).
    """

    def __init__(self, runner: web.AppRunner, server: web.Server) -> None:
        self._runner = runner
        self._server = server

    @classmethod
    async def start(cls, app: web.Application) -> SiteApp:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        assert runner.server is not None
        return cls(runner, runner.server)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        own = self._server.request_factory(
            request._message, request.content, request.protocol, request.writer, request.task
        )
        return await self._server.request_handler(own)

    async def aclose(self) -> None:
        await self._runner.cleanup()
