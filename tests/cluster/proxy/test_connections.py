"""ConnectionGuard on a plain loopback listener: the per-address cap, the head timeout, the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from wardgate.cluster.proxy.connections import ConnectionGuard, ConnectionLimits

LIMITS = ConnectionLimits(header_timeout=0.3, idle_timeout=0.6, max_connections_per_ip=3)
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[ConnectionGuard, int]]:
    server = web.Server(_ok, handler_cancellation=True, access_log=None, **LIMITS.server_options())
    guard = ConnectionGuard(server, LIMITS, name="test", cap=True)
    listener = await asyncio.get_running_loop().create_server(guard, "127.0.0.1", 0)
    try:
        yield guard, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await server.shutdown(1)
        await listener.wait_closed()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _closed_after(reader: asyncio.StreamReader, seconds: float) -> float | None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


async def test_connections_beyond_the_cap_are_closed_at_once(guarded: tuple[ConnectionGuard, int]) -> None:
    guard, port = guarded
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    closed = await asyncio.gather(*(_closed_after(reader, 0.1) for reader, _ in connections))
    assert [c is not None for c in closed] == [False, False, False, True, True]
    assert guard.refused == 2 and guard.connections("127.0.0.1") == 3
    for _, writer in connections:
        await _close(writer)
    for _ in range(50):
        if guard.connections("127.0.0.1") == 0:
            break
        await asyncio.sleep(0.01)
    assert guard.connections("127.0.0.1") == 0


async def test_a_head_not_complete_in_time_is_cut(guarded: tuple[ConnectionGuard, int]) -> None:
    guard, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    closed = await _closed_after(reader, 1.0)
    assert closed is not None and 0.2 <= closed <= 0.6, closed
    assert guard.timed_out == 1
    await _close(writer)


async def test_a_served_connection_is_kept_until_the_idle_timeout(guarded: tuple[ConnectionGuard, int]) -> None:
    guard, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"ok")
    answered = time.monotonic()
    closed = await _closed_after(reader, 2.0)
    idle = time.monotonic() - answered
    assert closed is not None and LIMITS.idle_timeout - 0.1 <= idle <= LIMITS.idle_timeout + 0.5, idle
    assert guard.timed_out == 0
    await _close(writer)
