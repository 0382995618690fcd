"""Health for load balancers on the admin listener: `/healthz` (the process answers) and `/readyz`.

/readyz ─▶ store: its revision R, read within STORE_TIMEOUT (the database answers)
        ─▶ synced: every worker of this node serves R within SYNC_TIMEOUT (the worker board; a node
           still loading or catching up after an outage is not ready)
        ─▶ listeners: the public (and tunnel) listeners are bound
        ─▶ 200 {"status": "ready", ...} or 503 naming the failing checks
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from wardgate.cluster.api.state import CACHE, NODE, PROPAGATION, STORE
from wardgate.cluster.errors import WardgateError

STORE_TIMEOUT = 2.0
SYNC_TIMEOUT = 1.0


class Readiness:
    """What only the composition root knows: whether its listeners are up."""

    def __init__(self) -> None:
        self.listeners_up = False


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app[NODE], "revision": request.app[CACHE].revision})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, str] = {}
    revision: int | None = None
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            revision = await app[STORE].revision()
        checks["store"] = "ok"
    except WardgateError as exc:
        checks["store"] = f"unreachable: {exc}"
    except TimeoutError:
        checks["store"] = f"unreachable: no answer within {STORE_TIMEOUT:g} s"
    if revision is None:
        checks["synced"] = "unknown (no store)"
    else:
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                await app[PROPAGATION].settle(revision)
            checks["synced"] = "ok"
        except (WardgateError, TimeoutError):
            checks["synced"] = (
                f"catching up: this node serves revision {app[CACHE].revision}, the store is at {revision}"
            )
    checks["listeners"] = "ok" if app[READINESS].listeners_up else "starting"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "node": app[NODE], "revision": revision, "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


def install(app: web.Application, readiness: Readiness) -> None:
    app[READINESS] = readiness
    app.router.add_get("/readyz", readyz)
