"""http1.Pool against real loopback upstreams: raw asyncio servers whose every byte is written by hand (a
hostile or broken upstream), an aiohttp server (a well-behaved one) and a TLS one with a self-signed
certificate. Nothing is mocked; IDLE_TIMEOUT, MAX_IDLE and MAX_UNREAD are monkeypatched small where a test
needs them to be."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from wardgate.cluster.proxy import http1

HOST = "127.0.0.1"
FAST = http1.Timeouts(connect=1.0, read=0.5)
SHORT = http1.Timeouts(connect=1.0, read=0.2)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
READ_SIZE = 256 * 1024
"""The most an asyncio transport reads at once (selector_events.max_size): what may come on top of MAX_UNREAD."""


# the upstream side


class Peer:
    """One accepted connection, as the upstream sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        self.reader = reader
        self.writer = writer
        self.index = index
        self.requests: list[bytes] = []

    async def request(self) -> bytes | None:
        """The next request (head and Content-Length body), or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(length[1])) if length else b""
        self.requests.append(head + body)
        return head + body

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Each part in its own write, `pause` seconds apart."""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    async def closed_by_client(self, within: float = 1.0) -> bool:
        """Whether the client closes the connection within `within` seconds (what it sends meanwhile is dropped)."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    async def ended(self, within: float = 0.5) -> bool:
        """Whether the client's end of the connection arrives within `within` seconds, while a handler reads."""
        deadline = time.monotonic() + within
        while not self.reader.at_eof():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True


Handler = Callable[[Peer], Awaitable[None]]


class Upstream:
    """A loopback server that runs `handler` on each connection and remembers every connection and request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> Upstream:
        self._server = await asyncio.start_server(self._serve, HOST, 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer, len(self.peers))
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled handler as an error
        finally:
            writer.close()
            self._tasks.discard(task)

    @property
    def accepts(self) -> int:
        return len(self.peers)

    @property
    def requests(self) -> list[bytes]:
        return [request for peer in self.peers for request in peer.requests]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()


class Serve(Protocol):
    def __call__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> Awaitable[Upstream]: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    running: list[Upstream] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> Upstream:
        upstream = await Upstream(handler).start(tls)
        running.append(upstream)
        return upstream

    yield start
    for upstream in running:
        await upstream.stop()


@pytest.fixture
async def pool() -> AsyncIterator[http1.Pool]:
    pool = http1.Pool()
    yield pool
    pool.close()
    await asyncio.sleep(0.01)  # the transports' connection_lost


def answering(*answers: bytes, close: bool = False) -> Handler:
    """Each request, on whichever connection, gets the next answer (the last one repeats); with `close` each
    connection ends after its first answer."""
    sent = 0

    async def handle(peer: Peer) -> None:
        nonlocal sent
        while await peer.request() is not None:
            answer = answers[min(sent, len(answers) - 1)]
            sent += 1
            await peer.send(answer)
            if close:
                return

    return handle


async def hold(peer: Peer) -> None:
    """Keep the connection open and say nothing."""
    await asyncio.Event().wait()


def once(*parts: bytes, pause: float = 0.0, then_close: bool = False) -> Handler:
    """Read one request, send `parts` (`pause` apart), then close or hold the connection."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(*parts, pause=pause)
        if not then_close:
            await hold(peer)

    return handle


# the client side


@dataclass
class Got:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes


async def fetch(
    pool: http1.Pool,
    port: int,
    target: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    timeouts: http1.Timeouts = FAST,
    host: str = HOST,
    scheme: str = "http",
) -> Got:
    async with pool.request(method, scheme, host, port, target, headers, body, timeouts) as reply:
        return Got(reply.status, reply.reason, reply.headers, await reply.read())


def idle(pool: http1.Pool, port: int, scheme: str = "http", host: str = HOST) -> int:
    """Idle connections the pool holds for one upstream."""
    return len(pool._idle.get((scheme, host, port), []))


# the request as the upstream receives it


async def test_get_sends_the_request_line_headers_in_order_and_a_default_host(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK))
    headers = [("Accept", "*/*"), ("X-Trace", "a"), ("x-trace", "b"), ("Authorization", "Bearer k")]
    got = await fetch(pool, up.port, "/v1/models?limit=2&after=x", headers=headers)
    assert got.status == 200 and got.body == b"ok"
    assert up.requests == [
        b"GET /v1/models?limit=2&after=x HTTP/1.1\r\n"
        b"Accept: */*\r\nX-Trace: a\r\nx-trace: b\r\nAuthorization: Bearer k\r\n"
        b"Host: 127.0.0.1:%d\r\n\r\n" % up.port
    ]


@pytest.mark.parametrize("name", ["Host", "host", "HOST"])
async def test_a_given_host_is_sent_instead_of_the_default(serve: Serve, pool: http1.Pool, name: str) -> None:
    up = await serve(answering(OK))
    await fetch(pool, up.port, headers=[(name, "api.example.com"), ("Accept", "*/*")])
    assert up.requests == [b"GET / HTTP/1.1\r\n%s: api.example.com\r\nAccept: */*\r\n\r\n" % name.encode()]


@pytest.mark.parametrize(
    "name",
    ["Connection", "connection", "Transfer-Encoding", "TRANSFER-ENCODING", "Content-Length", "content-length"],
)
async def test_framing_headers_of_the_caller_are_not_copied(serve: Serve, pool: http1.Pool, name: str) -> None:
    up = await serve(answering(OK))
    value = {"connection": "close, upgrade", "transfer-encoding": "chunked", "content-length": "999"}[name.lower()]
    await fetch(pool, up.port, method="POST", headers=[(name, value), ("X-A", "1")], body=b"hello")
    await fetch(pool, up.port, headers=[(name, value)])
    assert up.requests == [
        b"POST / HTTP/1.1\r\nX-A: 1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 5\r\n\r\nhello" % up.port,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % up.port,
    ]
    assert up.accepts == 1  # the dropped "Connection: close" did not close anything


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [
        ("POST", b'{"model": "m"}', b"14"),
        ("POST", b"", b"0"),
        ("PUT", b"", b"0"),
        ("PATCH", b"x", b"1"),
        ("GET", b"", None),
        ("DELETE", b"", None),
        ("OPTIONS", b"", None),
        ("GET", b"abc", b"3"),
        ("DELETE", b"{}", b"2"),
    ],
)
async def test_content_length_is_sent_when_there_is_a_body_or_the_method_takes_one(
    serve: Serve, pool: http1.Pool, method: str, body: bytes, length: bytes | None
) -> None:
    up = await serve(answering(OK))
    got = await fetch(pool, up.port, method=method, body=body)
    assert got.body == b"ok"
    [request] = up.requests
    head, _, sent = request.partition(b"\r\n\r\n")
    assert head.startswith(method.encode() + b" / HTTP/1.1\r\n")
    assert re.findall(rb"(?im)^content-length: *(\S*)", head) == ([length] if length is not None else [])
    assert b"transfer-encoding" not in head.lower()
    assert sent == body


async def test_header_values_go_out_as_utf_8_and_escaped_bytes_come_back_as_bytes(
    serve: Serve, pool: http1.Pool
) -> None:
    up = await serve(answering(OK))
    await fetch(pool, up.port, headers=[("X-Name", "café ☕"), ("X-Raw", "a\udcffb"), ("X-Tab", "a\tb")])
    [request] = up.requests
    assert b"\r\nX-Name: caf\xc3\xa9 \xe2\x98\x95\r\n" in request
    assert b"\r\nX-Raw: a\xffb\r\n" in request
    assert b"\r\nX-Tab: a\tb\r\n" in request


@pytest.mark.parametrize(
    ("scheme", "host", "port", "shown"),
    [
        ("http", "api.example", 80, "api.example"),
        ("https", "api.example", 443, "api.example"),
        ("http", "api.example", 443, "api.example:443"),
        ("https", "api.example", 80, "api.example:80"),
        ("http", "10.0.0.1", 8080, "10.0.0.1:8080"),
        ("http", "::1", 80, "[::1]"),
        ("https", "fe80::1", 8443, "[fe80::1]:8443"),
    ],
)
def test_the_default_host_header_leaves_out_the_default_port(scheme: str, host: str, port: int, shown: str) -> None:
    assert http1._host_header(scheme, host, port) == shown


async def test_ipv6_loopback_gets_a_bracketed_host(pool: http1.Pool) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(handle, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        port = server.sockets[0].getsockname()[1]
        got = await fetch(pool, port, host="::1")
        assert got.body == b"ok"
        assert seen == [b"GET / HTTP/1.1\r\nHost: [::1]:%d\r\n\r\n" % port]
    finally:
        server.close()
        await server.wait_closed()


# the reply


async def test_status_reason_and_headers_multi_valued_and_in_order(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(
        answering(
            b"HTTP/1.1 201 Created It Is\r\n"
            b"Set-Cookie: a=1\r\nX-Empty:\r\nset-cookie: b=2\r\nContent-Type: application/json\r\n"
            b"X-Latin: caf\xc3\xa9\r\nContent-Length: 5\r\n\r\nhello"
        )
    )
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert (reply.status, reply.reason) == (201, "Created It Is")
        assert reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert list(reply.headers.items()) == [
            ("Set-Cookie", "a=1"),
            ("X-Empty", ""),
            ("set-cookie", "b=2"),
            ("Content-Type", "application/json"),
            ("X-Latin", "café"),
            ("Content-Length", "5"),
        ]
        assert reply.content_length == 5
        assert await reply.read() == b"hello"
        assert await reply.read() == b""
        assert await reply.readany() == b""


async def test_a_status_line_without_a_reason(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"))
    got = await fetch(pool, up.port)
    assert (got.status, got.reason, got.body) == (404, "", b"")


async def test_readany_gives_what_has_arrived_and_then_the_end(serve: Serve, pool: http1.Pool) -> None:
    arrived = asyncio.Event()

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
        await asyncio.wait_for(arrived.wait(), 2)
        await peer.send(b" world")
        await hold(peer)

    up = await serve(handle)
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert reply.content_length == 11
        assert await reply.readany() == b"hello"
        arrived.set()
        assert await reply.readany() == b" world"
        assert await reply.readany() == b""
    assert idle(pool, up.port) == 1


async def test_no_content_length_means_content_length_none(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert reply.content_length is None
        assert await reply.read() == b"ok"


async def test_trailing_whitespace_is_not_part_of_a_header_value(serve: Serve, pool: http1.Pool) -> None:
    """RFC 9110 5.5: a field value does not include leading or trailing whitespace. llhttp drops the leading
    whitespace only; a 'Content-Length: 2 ' answer (valid; llhttp frames the body with it) then has no
    content_length, and the relay takes the streamed path and _drain closes instead of draining."""
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nX-Pad: \t padded \t\r\nContent-Length: 2 \r\n\r\nok"))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert await reply.read() == b"ok"
        assert reply.content_length == 2
        assert reply.headers["Content-Length"] == "2"
        assert reply.headers["X-Pad"] == "padded"


async def test_timeouts_may_be_none(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK))
    got = await fetch(pool, up.port, timeouts=http1.Timeouts(None, None))
    assert got.body == b"ok"


# keep-alive


async def test_sequential_requests_share_one_connection(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK))
    for _ in range(5):
        assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 1 and len(up.requests) == 5
    assert idle(pool, up.port) == 1


async def test_concurrent_requests_open_connections_that_are_then_reused(serve: Serve, pool: http1.Pool) -> None:
    started = asyncio.Event()
    waiting = 0

    async def handle(peer: Peer) -> None:
        nonlocal waiting
        while await peer.request() is not None:
            waiting += 1
            if waiting == 4:
                started.set()
            await asyncio.wait_for(started.wait(), 2)  # all four in flight at once
            await peer.send(OK)

    up = await serve(handle)
    for _ in range(2):
        results = await asyncio.gather(*(fetch(pool, up.port) for _ in range(4)))
        assert [r.body for r in results] == [b"ok"] * 4
    assert up.accepts == 4 and len(up.requests) == 8
    assert sorted(len(p.requests) for p in up.peers) == [2, 2, 2, 2]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_an_answer_that_ends_its_connection_is_not_reused(serve: Serve, pool: http1.Pool, answer: bytes) -> None:
    up = await serve(answering(answer))
    for _ in range(3):
        assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 3
    assert idle(pool, up.port) == 0
    assert all([await peer.ended() for peer in up.peers])


async def test_an_http_1_0_answer_asking_for_keep_alive_is_reused(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"))
    for _ in range(3):
        assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 1


async def test_an_answer_not_read_to_the_end_closes_its_connection(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert await reply.readany() == b"hello"
    assert idle(pool, up.port) == 0
    assert await up.peers[0].closed_by_client(0.5)


async def test_an_answer_whose_body_was_not_even_started_closes_its_connection(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert reply.status == 200
    assert idle(pool, up.port) == 0
    assert await up.peers[0].closed_by_client(0.5)


async def test_reply_close_gives_up_the_connection(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody", OK))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        await asyncio.sleep(0.02)  # the whole answer is in
        reply.close()
    assert idle(pool, up.port) == 0
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 2


async def test_an_exception_in_the_block_closes_the_connection(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK))
    with pytest.raises(KeyError):
        async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
            assert await reply.read() == b"ok"
            raise KeyError("the relay failed")
    assert idle(pool, up.port) == 0
    await fetch(pool, up.port)
    assert up.accepts == 2


async def test_different_upstreams_do_not_share_connections(serve: Serve, pool: http1.Pool) -> None:
    a = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"))
    b = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"))
    for _ in range(3):
        assert (await fetch(pool, a.port)).body == b"a"
        assert (await fetch(pool, b.port)).body == b"b"
    assert (a.accepts, b.accepts) == (1, 1)
    assert all(b"127.0.0.1:%d" % a.port in r for r in a.requests)
    assert all(b"127.0.0.1:%d" % b.port in r for r in b.requests)


async def test_the_same_port_as_http_and_https_does_not_share(serve: Serve, pool: http1.Pool) -> None:
    """(scheme, host, port) is the key: a plain connection is never handed to an https request."""
    up = await serve(answering(OK))
    await fetch(pool, up.port)
    with pytest.raises((http1.ConnectFailed, http1.ConnectTimeout)):  # a TLS handshake with a plain HTTP server
        await fetch(pool, up.port, scheme="https", timeouts=http1.Timeouts(0.1, 0.1))
    assert idle(pool, up.port) == 1
    assert (await fetch(pool, up.port)).body == b"ok"
    assert len(up.peers[0].requests) == 2


# stale keep-alive


async def test_a_connection_the_upstream_closed_while_idle_is_replaced(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK, close=True))
    for _ in range(3):
        assert (await fetch(pool, up.port)).body == b"ok"
        await asyncio.sleep(0.02)  # the upstream's FIN is seen while the connection is idle
    assert up.accepts == 3 and len(up.requests) == 3


async def test_a_reused_connection_closed_before_its_answer_is_retried_once(serve: Serve, pool: http1.Pool) -> None:
    """The keep-alive race: the upstream closes an idle connection as the next request goes out."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()  # the next request on this connection: closed unanswered

    up = await serve(handle)
    await fetch(pool, up.port)
    got = await fetch(pool, up.port, method="PUT", body=b"payload")
    assert got.body == b"ok"
    assert up.accepts == 2
    assert [len(p.requests) for p in up.peers] == [2, 1]
    assert up.peers[0].requests[1] == up.peers[1].requests[0]  # the same request, body included
    assert up.peers[1].requests[0].endswith(b"\r\n\r\npayload")


@pytest.mark.parametrize(
    ("headers", "replayed"),
    [((), False), ((("Idempotency-Key", "k1"),), True), ((("x-idempotency-key", "k1"),), True)],
)
async def test_a_post_is_replayed_on_a_stale_connection_only_with_an_idempotency_key(
    serve: Serve, pool: http1.Pool, headers: tuple[tuple[str, str], ...], replayed: bool
) -> None:
    """The upstream may have acted on a POST it then dropped: without the caller's key it is not sent twice
    (the gateway's retry policy decides, as with any reset), as Go's net/http and aiohttp decide."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(OK)
            await peer.request()  # closed unanswered
        else:
            await peer.send(OK)

    up = await serve(handle)
    await fetch(pool, up.port)
    if replayed:
        assert (await fetch(pool, up.port, method="POST", headers=headers, body=b"payload")).body == b"ok"
    else:
        with pytest.raises(http1.ResponseBroken) as broken:
            await fetch(pool, up.port, method="POST", headers=headers, body=b"payload")
        assert broken.value.kind == "reset"
    await asyncio.sleep(0.02)
    assert up.accepts == (2 if replayed else 1)


async def test_a_reused_connection_reset_before_its_answer_is_retried_once(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.writer.transport.abort()  # RST

    up = await serve(handle)
    await fetch(pool, up.port)
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 2


async def test_the_retry_is_not_retried(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(OK)
            await peer.request()
        # the new connection is closed too, before a byte of its answer

    up = await serve(handle)
    await fetch(pool, up.port)
    with pytest.raises(http1.ResponseBroken) as broken:
        await fetch(pool, up.port)
    assert broken.value.kind == "reset"
    await asyncio.sleep(0.05)
    assert up.accepts == 2


async def test_a_new_connection_closed_before_any_byte_is_not_retried(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()

    up = await serve(handle)
    with pytest.raises(http1.ResponseBroken):
        await fetch(pool, up.port)
    await asyncio.sleep(0.05)
    assert up.accepts == 1


async def test_a_new_connection_closed_at_accept_is_not_retried(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        pass

    up = await serve(handle)
    with pytest.raises(http1.ResponseBroken):
        await fetch(pool, up.port)
    await asyncio.sleep(0.05)
    assert up.accepts == 1


@pytest.mark.parametrize(
    "partial",
    [
        b"H",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
    ],
)
async def test_a_reused_connection_that_breaks_after_some_answer_bytes_is_not_retried(
    serve: Serve, pool: http1.Pool, partial: bytes
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(partial)

    up = await serve(handle)
    await fetch(pool, up.port)
    with pytest.raises(http1.ResponseBroken):
        await fetch(pool, up.port)
    await asyncio.sleep(0.05)
    assert up.accepts == 1


async def test_a_reused_connection_that_times_out_is_not_retried(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await hold(peer)

    up = await serve(handle)
    await fetch(pool, up.port)
    with pytest.raises(http1.ReadTimeout):
        await fetch(pool, up.port, timeouts=SHORT)
    assert up.accepts == 1


# body framing


async def test_a_chunked_answer_with_extensions_and_trailers(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(
        answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\nA\r\n and more\n\r\n0\r\nX-Trailer: t\r\n\r\n",
            OK,
        )
    )
    assert (await fetch(pool, up.port)).body == b"hello and more\n"
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 1


async def test_each_chunk_comes_out_as_it_arrives(serve: Serve, pool: http1.Pool) -> None:
    first_seen = asyncio.Event()

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.wait_for(first_seen.wait(), 2)  # nothing more until the client has the first chunk
        await peer.send(b"7\r\n wor", b"ld!\r\n", b"1", b"0\r\n", b"0123456789abcdef\r", b"\n0\r\n\r\n", pause=0.01)
        await hold(peer)

    up = await serve(handle)
    got: list[bytes] = []
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        async for chunk in reply.chunks():
            got.append(chunk)
            first_seen.set()
    assert got[0] == b"hello"
    assert len(got) >= 3
    assert b"".join(got) == b"hello world!0123456789abcdef"
    assert idle(pool, up.port) == 1


async def test_a_content_length_body_split_over_writes(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\nContent-", b"Length: 6\r\n", b"\r\nab", b"cd", b"ef", pause=0.01))
    got: list[bytes] = []
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        async for chunk in reply.chunks():
            got.append(chunk)
    assert b"".join(got) == b"abcdef" and len(got) == 3
    assert idle(pool, up.port) == 1


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_a_body_delimited_by_the_end_of_the_connection(serve: Serve, pool: http1.Pool, version: bytes) -> None:
    up = await serve(
        once(version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\none ", b"two ", b"three", then_close=True)
    )
    got: list[bytes] = []
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert reply.content_length is None
        async for chunk in reply.chunks():
            got.append(chunk)
    assert b"".join(got) == b"one two three"
    assert idle(pool, up.port) == 0
    await fetch(pool, up.port)  # the handler is gone, but a new connection is opened
    assert up.accepts == 2


@pytest.mark.parametrize("coding", ["gzip", "identity", "chunked, gzip", "gzip, chunked, br"])
async def test_a_transfer_coding_that_does_not_end_in_chunked_is_delimited_by_the_end_of_the_connection(
    serve: Serve, pool: http1.Pool, coding: str
) -> None:
    """RFC 9112 6.3: when chunked is not the final transfer coding, the response body ends with the connection;
    llhttp frames it so. http1 decides "until EOF" by itself with `"chunked" in value` and disagrees."""
    up = await serve(
        once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n" % coding.encode(), b"abc", then_close=True)
    )
    got = await fetch(pool, up.port)
    assert got.body == b"abc"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
async def test_answers_without_a_body_complete_and_are_reused(serve: Serve, pool: http1.Pool, answer: bytes) -> None:
    up = await serve(answering(answer, OK))
    got = await fetch(pool, up.port, timeouts=SHORT)
    assert got.body == b""
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 1


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"HTTP/1.1 102 Processing\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nLink: </app.js>\r\n\r\n"],
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"] * 20,
    ],
)
@pytest.mark.parametrize("together", [True, False])
async def test_interim_answers_are_skipped(
    serve: Serve, pool: http1.Pool, interim: list[bytes], together: bool
) -> None:
    final = b"HTTP/1.1 200 Fine\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok"
    parts = [b"".join([*interim, final])] if together else [*interim, final]
    up = await serve(once(*parts, pause=0.005))
    got = await fetch(pool, up.port)
    assert (got.status, got.reason, got.body) == (200, "Fine", b"ok")
    assert list(got.headers.items()) == [("X-Final", "1"), ("Content-Length", "2")]
    assert idle(pool, up.port) == 1


async def test_switching_protocols_is_an_error(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(
        once(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00")
    )
    with pytest.raises(http1.ResponseBroken, match="switched protocols"):
        await fetch(pool, up.port)
    assert idle(pool, up.port) == 0
    assert await up.peers[0].closed_by_client(0.5)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n",
    ],
)
async def test_a_head_answer_has_no_body_and_does_not_hang(serve: Serve, pool: http1.Pool, answer: bytes) -> None:
    up = await serve(answering(answer, OK))
    started = time.monotonic()
    async with pool.request("HEAD", "http", HOST, up.port, "/", [], b"", SHORT) as reply:
        assert reply.status in (200, 404)
        assert await reply.read() == b""
        assert [chunk async for chunk in reply.chunks()] == []
    assert time.monotonic() - started < 0.15
    assert up.requests[0] == b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % up.port
    assert (await fetch(pool, up.port)).body == b"ok"  # documented: a HEAD's connection is not reused


# errors


async def test_connection_refused_is_connect_failed() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        pool = http1.Pool()
        with pytest.raises(http1.ConnectFailed) as failed:
            await fetch(pool, port)
    assert failed.value.kind == "connect"
    assert not isinstance(failed.value, TimeoutError)
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full: Linux drops further SYNs, so a connect hangs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex((HOST, port))
        time.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on Linux dropping SYNs on a full backlog")
async def test_connect_timeout() -> None:
    pool = http1.Pool()
    with full_backlog() as port:
        started = time.monotonic()
        with pytest.raises(http1.ConnectTimeout) as timed_out:
            await fetch(pool, port, timeouts=http1.Timeouts(connect=0.2, read=5.0))
        elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 0.6
    assert timed_out.value.kind == "connect"
    assert isinstance(timed_out.value, TimeoutError)


async def test_an_upstream_that_never_answers_is_a_read_timeout(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(once())
    started = time.monotonic()
    with pytest.raises(http1.ReadTimeout) as timed_out:
        await fetch(pool, up.port, timeouts=SHORT)
    elapsed = time.monotonic() - started
    assert 0.18 < elapsed < 0.5
    assert timed_out.value.kind == "timeout"
    assert isinstance(timed_out.value, TimeoutError)
    assert await up.peers[0].closed_by_client(0.5)
    assert idle(pool, up.port) == 0


@pytest.mark.parametrize(
    "part", [b"H", b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"]
)
async def test_half_a_head_then_silence_is_a_read_timeout(serve: Serve, pool: http1.Pool, part: bytes) -> None:
    up = await serve(once(part))
    with pytest.raises(http1.ReadTimeout):
        await fetch(pool, up.port, timeouts=SHORT)
    assert await up.peers[0].closed_by_client(0.5)


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"]
)
async def test_a_body_that_stalls_is_a_read_timeout_from_read_and_chunks(
    serve: Serve, pool: http1.Pool, framing: bytes
) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\n" + framing))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", SHORT) as reply:
        with pytest.raises(http1.ReadTimeout):
            await reply.read()
    got: list[bytes] = []
    with pytest.raises(http1.ReadTimeout):
        async with pool.request("GET", "http", HOST, up.port, "/", [], b"", SHORT) as reply:
            async for chunk in reply.chunks():
                got.append(chunk)
    assert got == [b"abc"]
    assert idle(pool, up.port) == 0
    assert up.accepts == 2


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 10\r\n\r\nabc",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc",
    ],
)
async def test_a_body_cut_short_is_response_broken_from_read_and_chunks(
    serve: Serve, pool: http1.Pool, framing: bytes
) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\n" + framing, then_close=True))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        with pytest.raises(http1.ResponseBroken):
            await reply.read()
    got: list[bytes] = []
    with pytest.raises(http1.ResponseBroken) as broken:
        async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
            async for chunk in reply.chunks():
                got.append(chunk)
    assert b"".join(got).startswith(b"abc")
    assert broken.value.kind == "reset"
    assert idle(pool, up.port) == 0


MALFORMED = [
    b"garbage\r\n\r\n",
    b"\x15\x03\x01\x00\x02\x02\x28",  # a TLS alert: an https upstream on an http endpoint
    b"\x00" * 64,
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n X-Folded: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: \x01\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\na",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
]


@pytest.mark.parametrize("answer", MALFORMED)
async def test_a_malformed_answer_is_response_broken(serve: Serve, pool: http1.Pool, answer: bytes) -> None:
    up = await serve(once(answer))
    with pytest.raises(http1.ResponseBroken) as broken:
        async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
            await reply.read()
    assert broken.value.kind == "reset"
    assert idle(pool, up.port) == 0
    assert await up.peers[0].closed_by_client(0.5)


def _big_head(size: int) -> bytes:
    lines = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"a" * 990) for i in range(size // 1008 + 1))
    return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("size", [100 * 1024, 200 * 1024, 1024 * 1024])
async def test_a_head_over_max_head_in_one_write_is_refused(serve: Serve, pool: http1.Pool, size: int) -> None:
    """MAX_HEAD is checked only before a read (`before > MAX_HEAD`): a head that arrives in one read of up to
    256 KiB is parsed whole, so a 100 KB head (one read on loopback) is accepted."""
    assert size > http1.MAX_HEAD
    up = await serve(once(_big_head(size)))
    with pytest.raises(http1.ResponseBroken, match="head over"):
        await fetch(pool, up.port)


async def test_a_head_over_max_head_in_small_writes_is_refused(serve: Serve, pool: http1.Pool) -> None:
    head = _big_head(200 * 1024)

    async def handle(peer: Peer) -> None:
        await peer.request()
        for start in range(0, len(head), 4096):
            await peer.send(head[start : start + 4096])
            await asyncio.sleep(0)
        await hold(peer)

    up = await serve(handle)
    with pytest.raises(http1.ResponseBroken, match="head over"):
        await fetch(pool, up.port)


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 16384),
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: headers\r\n" * 1024),
        (b"HTTP/1.1 200 ", b"reason " * 2048),
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * 400),
    ],
)
async def test_an_endless_head_is_refused_and_the_upstream_is_cut_off(
    serve: Serve, pool: http1.Pool, start: bytes, filler: bytes
) -> None:
    """The client stops reading and closes: the upstream's writes then fail, after a bounded amount."""
    written = 0
    cut_off = asyncio.Event()

    async def handle(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        try:
            await peer.send(start)
            while written < 256 * 1024 * 1024:
                await peer.send(filler)
                written += len(filler)
        finally:
            cut_off.set()

    up = await serve(handle)
    started = time.monotonic()
    with pytest.raises(http1.ResponseBroken, match="head over"):
        await fetch(pool, up.port, timeouts=http1.Timeouts(1.0, 5.0))
    await asyncio.wait_for(cut_off.wait(), 2)
    assert time.monotonic() - started < 1.0
    assert written < 32 * 1024 * 1024  # kernel buffers at most; far from the 256 MB on offer


async def test_bytes_sent_after_the_answer_while_the_reply_is_open_stop_reuse(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(once(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged", pause=0.02))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        assert await reply.read() == b"ok"
        await asyncio.sleep(0.05)
    assert idle(pool, up.port) == 0


async def test_bytes_sent_to_an_idle_connection_stop_reuse(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await asyncio.sleep(0.02)
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        await hold(peer)

    up = await serve(handle)
    await fetch(pool, up.port)
    await asyncio.sleep(0.06)
    assert await up.peers[0].closed_by_client(0.5)
    up.handler = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
    assert (await fetch(pool, up.port)).body == b"real"
    assert up.accepts == 2


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",  # a whole second answer
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"XYZ",
        b"H",  # a second answer's start: llhttp waits for more
        b"HTTP/1.1 2",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1",
    ],
)
async def test_bytes_after_the_answer_in_the_same_write_stop_reuse(
    serve: Serve, pool: http1.Pool, extra: bytes
) -> None:
    """Whatever follows a complete answer was never asked for: the connection must not carry the next request
    (the next answer would be read after, or together with, those bytes)."""
    up = await serve(answering(OK + extra, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"))
    assert (await fetch(pool, up.port)).body == b"ok"
    got = await fetch(pool, up.port)
    assert (got.status, got.body) == (200, b"real")
    assert up.accepts == 2


async def test_the_next_answer_is_not_made_of_bytes_sent_before_its_request(serve: Serve, pool: http1.Pool) -> None:
    """The first answer is followed, in the same write, by the start of a head. When the connection is reused
    (and llhttp's parser kept that start), the next request's answer is parsed as the continuation of those
    stale bytes: status, reason and Content-Length come from before the request was sent."""
    stale = b"HTTP/1.1 201 Stale\r\nContent-Length: 6\r\nX-Stale: 1"
    sent = 0

    async def handle(peer: Peer) -> None:
        nonlocal sent
        while await peer.request() is not None:
            sent += 1
            if sent == 1:
                await peer.send(OK + stale)
            else:  # a body delimited by the end of the connection
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe real body")
                return

    up = await serve(handle)
    assert (await fetch(pool, up.port)).body == b"ok"
    got = await fetch(pool, up.port)
    assert (got.status, got.reason, got.body) == (200, "OK", b"the real body")
    assert "X-Stale" not in got.headers


# request smuggling


BAD_HEADERS = [
    ("X-A", "a\rb"),
    ("X-A", "a\nb"),
    ("X-A", "a\r\nX-Injected: 1"),
    ("X-A", "a\r\n\r\nGET /admin HTTP/1.1\r\nHost: x"),
    ("X-A", "a\x00b"),
    ("X-A", "\n"),
    ("Host", "example.com\r\nX-Injected: 1"),
    ("X A", "1"),
    ("X-A:", "1"),
    ("X-A: b\r\nX-B", "1"),
    ("", "1"),
    (" X-A", "1"),
    ("X-A\t", "1"),
    ("X-Ä", "1"),
    ("X(A)", "1"),
    ("X-A\x00", "1"),
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
async def test_a_header_that_could_smuggle_is_refused_before_anything_is_sent(
    serve: Serve, pool: http1.Pool, name: str, value: str
) -> None:
    up = await serve(answering(OK))
    await fetch(pool, up.port)  # a pooled connection that must stay untouched
    for _ in range(2):  # the second time through the header-name cache
        with pytest.raises(http1.BadRequestHead) as refused:
            await fetch(pool, up.port, method="POST", headers=[("X-Ok", "1"), (name, value)], body=b"{}")
        assert isinstance(refused.value, ValueError)
    await asyncio.sleep(0.02)
    assert up.accepts == 1 and len(up.requests) == 1
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 1 and len(up.requests) == 2


async def test_a_valid_name_cached_earlier_does_not_let_a_bad_value_through(serve: Serve, pool: http1.Pool) -> None:
    up = await serve(answering(OK))
    await fetch(pool, up.port, headers=[("X-Cached", "fine")])
    with pytest.raises(http1.BadRequestHead):
        await fetch(pool, up.port, headers=[("X-Cached", "bad\r\nX-Injected: 1")])
    assert len(up.requests) == 1


@pytest.mark.parametrize(
    "method", ["", "G ET", "GET\r\n", "GET /admin HTTP/1.1\r\nHost: x\r\n\r\nGET", "GET\x00", "GÉT", "GET:", "\tGET"]
)
async def test_a_method_that_is_not_a_token_is_refused(serve: Serve, pool: http1.Pool, method: str) -> None:
    up = await serve(answering(OK))
    with pytest.raises(http1.BadRequestHead):
        await fetch(pool, up.port, method=method)
    await asyncio.sleep(0.02)
    assert up.accepts == 0


@pytest.mark.parametrize("host", ["127.0.0.1\r\nX-Injected: 1", "127.0.0.1\n", "127.0.0.1\x00"])
async def test_a_host_that_would_smuggle_through_the_default_host_header_is_refused(
    pool: http1.Pool, host: str
) -> None:
    with pytest.raises(http1.BadRequestHead):
        await fetch(pool, 9, host=host)


@pytest.mark.parametrize(
    ("where", "text"),
    [("target", "/v1/\ud800"), ("header value", "\ud83d")],
)
async def test_text_that_cannot_be_encoded_is_a_bad_request_head(
    serve: Serve, pool: http1.Pool, where: str, text: str
) -> None:
    """BadRequestHead is "a header or request target that cannot be sent as HTTP/1.1"; a lone surrogate (not
    one of surrogateescape's \\udc80-\\udcff) escapes as UnicodeEncodeError, which the relay's
    `except (BadRequestHead, UpstreamError, ...)` clauses do not catch."""
    up = await serve(answering(OK))
    with pytest.raises(http1.BadRequestHead):
        if where == "target":
            await fetch(pool, up.port, text)
        else:
            await fetch(pool, up.port, headers=[("X-A", text)])
    assert up.accepts == 0


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("/a b", b"/a%20b"),
        ("/caf\u00e9?q=\u2603", b"/caf%C3%A9?q=%E2%98%83"),
        (
            "/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /admin",
            b"/x%20HTTP/1.1%0D%0AX-Injected:%201%0D%0A%0D%0AGET%20/admin",
        ),
        ("/a\tb", b"/a%09b"),
        ("/a\x00b", b"/a%00b"),
        ("/a\x7fb", b"/a%7Fb"),
        ("/%41 %zz", b"/%41%20%zz"),
        ("/raw\udcff", b"/raw%FF"),
        ("/ok?x=1&y=%20#f", b"/ok?x=1&y=%20#f"),
        ("*", b"*"),
    ],
)
async def test_an_unsafe_target_is_percent_encoded_into_one_request_line(
    serve: Serve, pool: http1.Pool, target: str, sent: bytes
) -> None:
    up = await serve(answering(OK))
    await fetch(pool, up.port, target, method="OPTIONS" if target == "*" else "GET")
    [request] = up.requests
    line, _, rest = request.partition(b"\r\n")
    assert line == (b"OPTIONS " if target == "*" else b"GET ") + sent + b" HTTP/1.1"
    assert rest == b"Host: 127.0.0.1:%d\r\n\r\n" % up.port
    await asyncio.sleep(0.02)
    assert len(up.requests) == 1


# flow control


async def test_a_slow_reader_holds_a_fast_upstream_back_and_gets_the_whole_body(serve: Serve, pool: http1.Pool) -> None:
    body = os.urandom(20 * 1024 * 1024)

    async def handle(peer: Peer) -> None:
        await peer.request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        peer.writer.write(body)  # all at once, as fast as it goes
        await peer.writer.drain()
        await hold(peer)

    up = await serve(handle)
    bound = http1.MAX_UNREAD + READ_SIZE
    digest, total, biggest, most_unread = hashlib.sha256(), 0, 0, 0
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", FAST) as reply:
        conn = reply._conn
        await asyncio.sleep(0.1)  # the reader stalls: reading from the upstream pauses
        assert conn._paused
        assert conn._unread <= bound
        assert up.peers[0].writer.transport.get_write_buffer_size() > len(body) // 2  # the upstream is held back
        while chunk := await reply.readany():
            digest.update(chunk)
            total += len(chunk)
            biggest = max(biggest, len(chunk))
            await asyncio.sleep(0.001)
            most_unread = max(most_unread, conn._unread)
    assert total == len(body)
    assert digest.digest() == hashlib.sha256(body).digest()
    assert biggest <= bound and most_unread <= bound
    assert idle(pool, up.port) == 1
    assert not conn._paused


async def test_a_connection_paused_at_the_end_of_its_answer_is_not_pooled_paused(
    serve: Serve, pool: http1.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's last bytes take the unread total over MAX_UNREAD: reading pauses and the answer completes
    in the same data_received. Left unread, the connection goes back to the pool still paused (begin() resets
    `_paused` but not the transport), and the next request on it reads nothing: ReadTimeout, not retried."""
    monkeypatch.setattr(http1, "MAX_UNREAD", 1000)
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, OK))
    async with pool.request("GET", "http", HOST, up.port, "/", [], b"", SHORT) as reply:
        assert reply.status == 200
        await asyncio.sleep(0.02)  # the whole answer is in; the caller decides not to read it
    got = await fetch(pool, up.port, timeouts=SHORT)
    assert got.body == b"ok"


# cancellation


async def _cancel_while_waiting(pool: http1.Pool, port: int, use_chunks: bool) -> asyncio.Task[bytes]:
    inside = asyncio.Event()

    async def client() -> bytes:
        async with pool.request("GET", "http", HOST, port, "/", [], b"", FAST) as reply:
            inside.set()
            if use_chunks:
                return b"".join([chunk async for chunk in reply.chunks()])
            return await reply.read()

    async with asyncio.TaskGroup() as group:
        task = group.create_task(client())
        await asyncio.wait_for(inside.wait(), 1)
        await asyncio.sleep(0.02)
        task.cancel()
    return task


@pytest.mark.parametrize("use_chunks", [False, True])
async def test_cancelling_a_reader_closes_the_connection_and_the_pool_goes_on(
    serve: Serve, pool: http1.Pool, use_chunks: bool
) -> None:
    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")(peer)
        else:
            await answering(OK)(peer)

    up = await serve(handle)
    task = await _cancel_while_waiting(pool, up.port, use_chunks)
    assert task.cancelled()
    assert idle(pool, up.port) == 0
    assert await up.peers[0].closed_by_client(0.5)
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 2 and idle(pool, up.port) == 1


async def test_cancelling_while_waiting_for_the_head_closes_the_connection(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await once()(peer)
        else:
            await answering(OK)(peer)

    up = await serve(handle)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(fetch(pool, up.port))
        await asyncio.sleep(0.05)
        task.cancel()
    assert task.cancelled()
    assert await up.peers[0].closed_by_client(0.5)
    assert (await fetch(pool, up.port)).body == b"ok"
    assert up.accepts == 2


async def test_an_outer_timeout_while_reading_closes_the_connection(serve: Serve, pool: http1.Pool) -> None:
    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")(peer)
        else:
            await answering(OK)(peer)

    up = await serve(handle)
    with pytest.raises(TimeoutError) as timed_out:
        async with asyncio.timeout(0.05):
            await fetch(pool, up.port, timeouts=http1.Timeouts(1.0, 5.0))
    assert not isinstance(timed_out.value, http1.UpstreamError)
    assert await up.peers[0].closed_by_client(0.5)
    assert (await fetch(pool, up.port)).body == b"ok"


# idle connections


async def test_an_idle_connection_past_idle_timeout_is_not_reused(
    serve: Serve, pool: http1.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "IDLE_TIMEOUT", 0.05)
    up = await serve(answering(OK))
    await fetch(pool, up.port)
    await fetch(pool, up.port)
    assert up.accepts == 1
    await asyncio.sleep(0.08)
    await fetch(pool, up.port)
    assert up.accepts == 2
    assert await up.peers[0].ended()


async def test_expired_connections_of_other_upstreams_are_swept(
    serve: Serve, pool: http1.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "IDLE_TIMEOUT", 0.05)
    a = await serve(answering(OK))
    b = await serve(answering(OK))
    await fetch(pool, a.port)
    await asyncio.sleep(0.08)
    await fetch(pool, b.port)  # giving b's connection back sweeps a's
    assert idle(pool, a.port) == 0 and ("http", HOST, a.port) not in pool._idle
    assert await a.peers[0].ended()
    assert not await b.peers[0].ended(0.05)


async def test_idle_connections_beyond_max_idle_are_closed(
    serve: Serve, pool: http1.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_IDLE", 1)
    both = asyncio.Event()
    waiting = 0

    async def handle(peer: Peer) -> None:
        nonlocal waiting
        while await peer.request() is not None:
            waiting += 1
            if waiting == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 2)
            await peer.send(OK)

    up = await serve(handle)
    await asyncio.gather(fetch(pool, up.port), fetch(pool, up.port))
    assert up.accepts == 2 and idle(pool, up.port) == 1
    await asyncio.sleep(0.02)
    closed = [p.reader.at_eof() for p in up.peers]
    assert sorted(closed) == [False, True]
    kept = up.peers[closed.index(False)]
    for _ in range(3):
        await fetch(pool, up.port)
    assert up.accepts == 2 and len(kept.requests) == 4


async def test_pool_close_closes_idle_connections(serve: Serve) -> None:
    up = await serve(answering(OK))
    pool = http1.Pool()
    await asyncio.gather(*(fetch(pool, up.port) for _ in range(3)))
    pool.close()
    assert up.accepts == 3
    assert all([await peer.ended() for peer in up.peers])


# a well-behaved upstream: aiohttp


@pytest.fixture
async def aiohttp_upstream() -> AsyncIterator[tuple[int, list[object]]]:
    peers: list[object] = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport)
        headers: CIMultiDict[str] = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return web.Response(text="hi", headers=headers)

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport)
        data = await request.read()
        return web.Response(
            body=data, headers={"X-Method": request.method, "X-Host": request.host, "X-Path": request.path_qs}
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"one", b"two", b"three"):
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        peers.append(request.transport)
        return web.Response(body=b"0123456789" * 100_000)

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, peers
    finally:
        await runner.cleanup()


async def test_against_aiohttp(aiohttp_upstream: tuple[int, list[object]], pool: http1.Pool) -> None:
    port, peers = aiohttp_upstream
    got = await fetch(pool, port, "/hello")
    assert (got.status, got.reason, got.body) == (200, "OK", b"hi")
    assert got.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    got = await fetch(pool, port, "/echo?x=a b", method="POST", body=b'{"a": 1}', headers=[("Host", "api.example")])
    assert (got.body, got.headers["X-Method"], got.headers["X-Host"]) == (b'{"a": 1}', "POST", "api.example")
    assert got.headers["X-Path"] == "/echo?x=a%20b"
    got = await fetch(pool, port, "/echo", method="PUT")
    assert (got.body, got.headers["X-Method"], got.headers["X-Host"]) == (b"", "PUT", f"{HOST}:{port}")
    chunks: list[bytes] = []
    async with pool.request("GET", "http", HOST, port, "/stream", [], b"", FAST) as reply:
        assert reply.headers["Transfer-Encoding"] == "chunked"
        async for chunk in reply.chunks():
            chunks.append(chunk)
    assert b"".join(chunks) == b"onetwothree" and len(chunks) >= 2
    assert (await fetch(pool, port, "/big")).body == b"0123456789" * 100_000
    async with pool.request("HEAD", "http", HOST, port, "/hello", [], b"", FAST) as reply:
        assert reply.status == 200 and await reply.read() == b""
    assert (await fetch(pool, port, "/hello")).body == b"hi"
    assert len(peers) == 7
    assert len({id(p) for p in peers[:5]}) == 1  # one keep-alive connection until the HEAD
    assert peers[6] is not peers[0]  # a HEAD's connection is not reused (documented)


# TLS


def _certificate(directory: Path, ip: str) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / f"{ip}.pem", directory / f"{ip}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, pem.decode()


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


def _tls(directory: Path, ip: str) -> Tls:
    cert, key, pem = _certificate(directory, ip)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return Tls(server, ssl.create_default_context(cadata=pem))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return _tls(tmp_path_factory.mktemp("tls"), HOST)


@pytest.fixture(scope="module")
def tls_other_name(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return _tls(tmp_path_factory.mktemp("tls"), "127.0.0.2")


async def test_https_with_a_trusted_certificate_is_reused(serve: Serve, tls: Tls) -> None:
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret"), tls.server)
    pool = http1.Pool(tls=tls.client)
    try:
        for _ in range(3):
            got = await fetch(pool, up.port, scheme="https", method="POST", body=b"x")
            assert got.body == b"secret"
        assert up.accepts == 1 and len(up.requests) == 3
        assert up.requests[0].startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % up.port)
        assert idle(pool, up.port, "https") == 1
    finally:
        pool.close()
        await asyncio.sleep(0.01)


async def test_https_body_delimited_by_the_end_of_the_connection(serve: Serve, tls: Tls) -> None:
    up = await serve(once(b"HTTP/1.1 200 OK\r\n\r\n", b"until ", b"the end", pause=0.01, then_close=True), tls.server)
    pool = http1.Pool(tls=tls.client)
    try:
        assert (await fetch(pool, up.port, scheme="https")).body == b"until the end"
        assert idle(pool, up.port, "https") == 0
    finally:
        pool.close()


async def test_https_large_body_with_flow_control(serve: Serve, tls: Tls) -> None:
    body = os.urandom(4 * 1024 * 1024)
    up = await serve(once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body), tls.server)
    pool = http1.Pool(tls=tls.client)
    try:
        async with pool.request("GET", "https", HOST, up.port, "/", [], b"", FAST) as reply:
            await asyncio.sleep(0.05)
            assert reply._conn._paused
            parts = []
            while chunk := await reply.readany():
                parts.append(chunk)
                await asyncio.sleep(0.001)
        assert b"".join(parts) == body
        assert max(len(p) for p in parts) <= http1.MAX_UNREAD + READ_SIZE
    finally:
        pool.close()
        await asyncio.sleep(0.01)


async def test_https_with_the_system_trust_refuses_a_self_signed_certificate(serve: Serve, tls: Tls) -> None:
    up = await serve(answering(OK), tls.server)
    pool = http1.Pool()
    with pytest.raises(http1.ConnectFailed) as failed:
        await fetch(pool, up.port, scheme="https")
    assert failed.value.kind == "connect"
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    assert up.requests == []


async def test_https_checks_the_name(serve: Serve, tls_other_name: Tls) -> None:
    up = await serve(answering(OK), tls_other_name.server)
    pool = http1.Pool(tls=tls_other_name.client)  # trusted, but made out to 127.0.0.2
    with pytest.raises(http1.ConnectFailed) as failed:
        await fetch(pool, up.port, scheme="https")
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    assert up.requests == []


async def test_https_to_an_upstream_that_never_shakes_hands_is_a_connect_timeout(serve: Serve, tls: Tls) -> None:
    up = await serve(hold)
    pool = http1.Pool(tls=tls.client)
    started = time.monotonic()
    with pytest.raises(http1.ConnectTimeout):
        await fetch(pool, up.port, scheme="https", timeouts=http1.Timeouts(connect=0.2, read=5.0))
    assert 0.15 < time.monotonic() - started < 0.6
