"""The listeners' HTTP server: an unparsable request gets a fixed body and one `malformed` call, and no byte of
it reaches the response or a log record; parsable requests and handler failures behave as aiohttp's."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from wardgate.cluster.proxy.listener import ListenerServer

SECRET = b"wgsecretTOKEN42"


async def _exchange(server: ListenerServer, payload: bytes) -> bytes:
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*listener.sockets[0].getsockname()[:2])
        writer.write(payload)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer
    finally:
        listener.close()
        await server.shutdown(1)


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


async def _boom(request: web.BaseRequest) -> web.StreamResponse:
    raise RuntimeError("handler failed")


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (b"Cookie: wardgate_session=" + SECRET + b"A" * 9000, 431),
        (b"Authorization: Bearer " + SECRET + b"\x00", 400),
        (b"X-" + SECRET + b"B" * 9000 + b": v", 431),
        (b"X-A: " + SECRET + b"\x7f", 400),
    ],
)
async def test_an_unparsable_request_is_answered_without_its_bytes(
    header: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[int, str]] = []
    server = ListenerServer(_ok, malformed=lambda r, s, reason: calls.append((s, reason)), access_log=None)
    caplog.set_level(logging.DEBUG)
    answer = await _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"%d" % status, answer[:100]
    assert answer.endswith((b"\r\n\r\nBad Request\n", b"\r\n\r\nRequest Header Fields Too Large\n"))
    assert SECRET not in answer
    assert len(calls) == 1 and calls[0][0] == status and SECRET.decode() not in calls[0][1]
    assert SECRET.decode() not in caplog.text


async def test_a_good_request_reaches_the_handler() -> None:
    calls: list[tuple[int, str]] = []
    server = ListenerServer(_ok, malformed=lambda r, s, reason: calls.append((s, reason)), access_log=None)
    answer = await _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok") and calls == []


async def test_a_handler_failure_is_aiohttps_generic_500_and_not_malformed() -> None:
    calls: list[tuple[int, str]] = []
    server = ListenerServer(_boom, malformed=lambda r, s, reason: calls.append((s, reason)), access_log=None)
    answer = await _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ") and b"handler failed" not in answer and calls == []
