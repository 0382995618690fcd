"""The access-log line of the cluster's own endpoints on `https://<domain>` (login, client access)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cluster.observability.accesslog import AccessLog

Step = Callable[[web.BaseRequest, dict[str, Any]], Awaitable[web.StreamResponse]]
Refusal = Callable[[Exception], web.StreamResponse | None]
"""A refusal the endpoint expects: its response (the exception's text becomes the logged reason), else None."""


async def logged(
    access_log: AccessLog,
    node: str | None,
    domain: str,
    event: str,
    request: web.BaseRequest,
    step: Step,
    refusal: Refusal,
) -> web.StreamResponse:
    """Run `step` (which may add fields to the entry) and write one line, refused or not."""
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "node": node or None,
        "listener": "public",
        "event": event,
        "method": request.method,
        "host": domain,
        "path": request.path,
        "remote": request.remote,
    }
    started = time.perf_counter()
    status = 500
    try:
        response = await step(request, entry)
        status = response.status
        return response
    except Exception as exc:
        refused = refusal(exc)
        if refused is None:
            raise
        entry["reason"] = getattr(exc, "reason", None) or str(exc)
        status = refused.status
        return refused
    finally:
        entry.update(status=status, durationMs=round((time.perf_counter() - started) * 1000, 3))
        access_log.write(entry)
