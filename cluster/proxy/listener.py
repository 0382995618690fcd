"""The HTTP server of a listener (public, tunnel, admin): aiohttp's, except for requests it cannot parse.

    bytes ─▶ aiohttp's parser ─┬─ a request ─▶ the listener's handler (the Gateway, or the admin app)
                               └─ unparsable (a header over 8 KiB, a control character, a bad request line)
                                  ─▶ `malformed(request, status, reason)`: one access-log line, and a fixed
                                     400 or 431 body

SECURITY: aiohttp's own answer to an unparsable request puts the offending bytes in the response body and
logs them with a traceback; those bytes are often the start of a bearer token or the session cookie (a
Cookie header over the line limit). Here neither the body nor any log line holds a byte of the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

Malformed = Callable[[web.BaseRequest, int, str], None]
"""Records an unparsable request (request, status, reason): the listener's access-log line."""


_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large"}


def malformed_response(status: int) -> web.Response:
    """The whole answer to an unparsable request: the status's reason phrase, then the connection closes."""
    response = web.Response(status=status, text=_REASONS[status] + "\n")
    response.force_close()
    return response


class _Handler(RequestHandler):
    """aiohttp's connection handler with its parse-error answer replaced."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            # Not the parser's (those come as 400): a handler failed, and aiohttp's generic 500 says nothing.
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        status = 431 if isinstance(exc, LineTooLong) else 400
        manager = self._manager
        if isinstance(manager, ListenerServer) and manager.malformed is not None:
            manager.malformed(request, status, f"unparsable request ({type(exc).__name__})")
        return malformed_response(status)


class ListenerServer(web.Server):
    """web.Server whose connections answer unparsable requests with a fixed body and `malformed`'s log line."""

    def __init__(self, handler: Any, *, malformed: Malformed | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.malformed = malformed

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class ListenerAppRunner(web.AppRunner):
    """web.AppRunner serving its Application through a ListenerServer (for the admin listener)."""

    def __init__(self, app: web.Application, *, malformed: Malformed | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._malformed = malformed

    async def _make_server(self) -> web.Server:
        app = self.app
        app._set_loop(asyncio.get_running_loop())
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        kwargs = {"debug": app._debug, **self._kwargs, **(app._handler_args or {})}
        return ListenerServer(app._handle, malformed=self._malformed, request_factory=app._make_request, **kwargs)
