"""Faults of the fake provider: which ones a request gets (instance defaults, `x-fake-*` headers) and the
OpenAI-shaped error and dropped connections they produce."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web

LATENCY_HEADER: Final = "x-fake-latency-ms"
CHUNK_DELAY_HEADER: Final = "x-fake-chunk-delay-ms"
FAIL_AFTER_CHUNKS_HEADER: Final = "x-fake-fail-after-chunks"
HANG_HEADER: Final = "x-fake-hang"
STATUS_HEADER: Final = "x-fake-status"
RETRY_AFTER_HEADER: Final = "x-fake-retry-after"
RESET_HEADER: Final = "x-fake-reset"
SILENT_HEADER: Final = "x-fake-silent"
TARGET_HEADER: Final = "x-fake-target"

SHUTDOWN: Final = web.AppKey("fake_openai_shutdown", asyncio.Event)
"""Set when the server stops: hung and silent requests end then."""


class ApiError(Exception):
    """An answer in OpenAI's error shape; raised anywhere below the dispatcher."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers = headers

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body),
            content_type="application/json",
            headers=self.headers,
        )


@dataclass(frozen=True, slots=True)
class Faults:
    latency: float
    chunk_delay: float
    fail_after_chunks: int | None
    hang: bool
    status: int | None = None
    retry_after: float | None = None
    reset: bool = False
    silent: bool = False


NO_FAULTS: Final = Faults(0.0, 0.0, None, False)


def header_number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ApiError(400, f"Invalid {name} header: {raw!r}.", param=name)
    return value


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection under the handler; aiohttp then skips the response."""
    if request.transport is not None:
        request.transport.close()
    return web.StreamResponse()


def injected(faults: Faults) -> ApiError:
    status = faults.status
    assert status is not None
    headers = {"retry-after": f"{faults.retry_after:g}"} if faults.retry_after is not None else None
    if status == 429:
        return ApiError(
            429, "Rate limit reached (injected).", kind="requests", code="rate_limit_exceeded", headers=headers
        )
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, f"Injected error {status}.", kind=kind, headers=headers)


def header_flag(headers: Mapping[str, str], name: str, default: bool) -> bool:
    raw = headers.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes")


async def silent_stream(request: web.Request) -> web.StreamResponse:
    """A stream's status and headers, then nothing until the server stops."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await request.app[SHUTDOWN].wait()
    return drop_connection(request)
