"""Fixtures for plugin tests: a small loopback HTTP service for Lua's http.client()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    return web.Response(status=201, text=f"{request.method} {request.path_qs} {request.headers.get('x-key')} {body}")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.Response(text="late")


@pytest.fixture
async def aiohttp_server_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/api/echo", _echo)
    app.router.add_get("/api/slow", _slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
