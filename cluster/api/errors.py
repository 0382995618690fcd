"""The one place where domain errors become HTTP responses (JSON problem bodies)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from wardgate.cluster.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated, Unavailable, WardgateError

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[WardgateError], int, str]] = [
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (Invalid, 422, "invalid"),
    (Unauthenticated, 401, "unauthenticated"),
    (Forbidden, 403, "forbidden"),
    (Unavailable, 503, "unavailable"),
]


def error_response(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": {"type": kind, "message": message, **extra}}
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wardgate"'
    return response


def to_response(exc: WardgateError) -> web.Response:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            extra: dict[str, Any] = {}
            if isinstance(exc, Invalid) and exc.problems:
                extra["problems"] = exc.problems
            return error_response(status, kind, str(exc), **extra)
    return error_response(500, "internal", str(exc))


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except WardgateError as exc:
        return to_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, "http", exc.reason)
    except RecursionError:
        # An input nested deeper than a parser or validator can walk (a body parsed outside admin._json).
        log.warning("input nested too deeply on %s %s", request.method, request.path)
        return error_response(422, "invalid", "the input is nested too deeply")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the cluster log")
