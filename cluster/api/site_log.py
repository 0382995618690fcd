"""The middlewares of the bare-domain app (`https://<domain>`): one access-log line per request, and refusals.

    access_log_middleware: an entry {time, node, event (the route's name), method, host, path, remote}
        ─▶ the handler adds fields (user, session, idp, ...) through `request[ENTRY]`
        ─▶ refusal_middleware: an expected refusal becomes its own response, its reason goes into the entry
        ─▶ the entry is written with the status and duration, whatever happened

Endpoints add routes with `route(method, path, event, step)`; a step gets the request and its entry.
"""

from __future__ import annotations

import logging
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from wardgate.cluster.api.errors import to_response
from wardgate.cluster.api.state import ACCESS_LOG, NODE
from wardgate.cluster.errors import WardgateError

log = logging.getLogger(__name__)

ENTRY: web.RequestKey[dict[str, Any]] = web.RequestKey("site_entry")
DOMAIN = web.AppKey("domain", str)
Step = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception, metaclass=ABCMeta):
    """A refusal an endpoint expects: `reason` is for the access log, `response()` for the caller, in the
    endpoint's own dialect (an HTML page for the browser, RFC 6749 JSON for an OAuth2 client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @abstractmethod
    def response(self) -> web.StreamResponse: ...


def route(method: str, path: str, event: str, step: Step) -> web.RouteDef:
    """A route whose handler gets the request's log entry; `event` names the route and its log lines.
    Routes sharing a path must be added one after another (aiohttp gives the name to the path)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await step(request, request[ENTRY])

    return web.route(method, path, handler, name=event)


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 6749 §5.2 error body, never cached."""
    response = web.Response(
        status=status,
        body=orjson.dumps({"error": error, "error_description": description}),
        content_type="application/json",
        headers=headers,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "node": request.app[NODE] or None,
        "listener": "public",
        "event": request.match_info.route.name,
        "method": request.method,
        "host": request.app[DOMAIN],
        "path": request.path,
        "remote": request.remote,
    }
    request[ENTRY] = entry
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        entry.update(status=status, durationMs=round((time.perf_counter() - started) * 1000, 3))
        request.app[ACCESS_LOG].write(entry)


@web.middleware
async def refusal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    entry = request[ENTRY]
    try:
        return await handler(request)
    except Refused as exc:
        entry["reason"] = exc.reason
        return exc.response()
    except WardgateError as exc:
        entry["reason"] = str(exc)
        return to_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        entry["reason"] = exc.reason
        if exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            return oauth_error(405, "invalid_request", f"use {allowed}", {"Allow": allowed})
        if exc.status == 404:
            return oauth_error(404, "not_found", f"no endpoint {request.path[:200]}")
        return oauth_error(exc.status, "invalid_request", exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        entry["reason"] = "internal error"
        return oauth_error(500, "server_error", "internal error; see the cluster log")
