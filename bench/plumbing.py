"""`make bench-plumbing`: the HTTP plumbing alternatives of issue 20, each as a minimal proxy, measured with wrk.

Not the Wardgate pipeline: each variant is a bare relay (read the request body, forward it with the
provider key to the fake OpenAI provider, answer with the provider's status, content type and body;
an SSE answer is relayed chunk by chunk), one process, one worker, uvloop. Listener x client:

    listener  aiohttp    aiohttp's low-level web.Server through wardgate's ListenerServer, handler_cancellation
              granian    granian's RSGI interface (hyper + rustls in Rust), the relay in Python
              httptools  an asyncio.Protocol on uvloop around httptools' llhttp request parser
    client    aiohttp    one shared ClientSession(TCPConnector(limit=0), auto_decompress=False)
              pyreqwest  one shared pyreqwest Client (Rust reqwest on its own tokio runtime)
              httptools  a pooled keep-alive client: asyncio.Protocol + httptools' response parser

The driver starts the provider and every variant twice (HTTPS with a self-signed certificate made here,
and plain HTTP), checks what the issue requires of each (streaming, client-disconnect cancellation,
request-size limit, keep-alive, refusal of smuggling and malformed requests, HTTP/2 over TLS), then runs
wrk against the provider directly and against every variant, interleaved (A B C A B C ...) for several
rounds, and prints medians: req/s at c=32, p50 at c=1 and its added ms over direct, ratios to direct, and
the proxy's CPU (user+system, all its threads and processes) per request at c=32, the steadiest figure on
a loaded machine. `granian-nowatch` is granian without the client-disconnect watcher (what it costs).
docs/http-plumbing.md holds the results and the choice.

    .venv/bin/python bench/plumbing.py [--duration 3] [--rounds 4] [--variants aiohttp/aiohttp,granian/aiohttp]
    .venv/bin/python bench/plumbing.py --checks-only
    PLUMBING_GRANIAN_ARGS="--http1-buffer-size 8192" ...   extra granian options
    PLUMBING_KEEP_LOGS=1 ...                                keep the variants' log (its path is printed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httptools
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PROVIDER_KEY = "sk-bench-provider-key"
CHAT_PATH = "/v1/chat/completions"
INFLIGHT_PATH = "/_inflight"
MAX_BODY = 1024 * 1024
"""The request-size limit every variant enforces (aiohttp's client_max_size default)."""
MAX_HEAD = 8190
"""Longest request line or header every Python-side parser accepts (aiohttp's max_line_size/max_field_size)."""
CHUNK_DELAY = "x-fake-chunk-delay-ms"
"""The one client header forwarded besides Content-Type: the fake provider's pause between SSE chunks."""
LISTENERS = ("aiohttp", "granian", "httptools")
CLIENTS = ("aiohttp", "pyreqwest", "httptools")
DEFAULT_VARIANTS = [(listener, client) for listener in LISTENERS for client in CLIENTS]
DEFAULT_VARIANTS.append(("granian-nowatch", "aiohttp"))
"""All nine pairs, plus granian without the disconnect watcher (what the watcher costs)."""


# ---------------------------------------------------------------------------------------------------------------------
# Upstream clients: `post(body, headers)` is an async context manager yielding the provider's answer.


class Reply(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class Client(Protocol):
    def post(self, body: bytes, headers: dict[str, str]) -> AbstractAsyncContextManager[Reply]: ...


class _AiohttpReply:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")

    async def read(self) -> bytes:
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()


class AiohttpClient:
    """aiohttp's client as the gateway's upstream.py uses it: one session, no pool limit, no decompression."""

    def __init__(self, upstream: str) -> None:
        self._url = upstream + CHAT_PATH
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def post(self, body: bytes, headers: dict[str, str]) -> AsyncIterator[Reply]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        async with self._session.post(self._url, data=body, headers=headers) as response:
            yield _AiohttpReply(response)


class _ReqwestReply:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = int(response.status)
        self.content_type = response.headers.get("content-type") or ""
        self._reader = response.body_reader

    async def read(self) -> bytes:
        return bytes(await self._reader.bytes())

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._reader.read_chunk()) is not None:
            yield bytes(chunk)


class PyreqwestClient:
    """pyreqwest's async Client (reqwest + hyper on a tokio runtime thread), one shared instance."""

    def __init__(self, upstream: str) -> None:
        self._url = upstream + CHAT_PATH
        self._client: Any = None

    @contextlib.asynccontextmanager
    async def post(self, body: bytes, headers: dict[str, str]) -> AsyncIterator[Reply]:
        if self._client is None:
            from pyreqwest.client import ClientBuilder

            self._client = ClientBuilder().build()
        # The default read buffer (64 KiB) holds the response back until it is full or complete: an SSE stream
        # would reach the client in one piece at the end. A limit of 1 byte hands each chunk on as it comes.
        builder = self._client.post(self._url).headers(headers).body_bytes(body)
        request = builder.streamed_read_buffer_limit(1).build_streamed()
        async with request as response:
            yield _ReqwestReply(response)


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection of the httptools client; parses one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.status = 0
        self.content_type = ""
        self._ctype = b""
        self._chunks: deque[bytes] = deque()
        self.done = False
        self.keep_alive = False
        self._error: BaseException | None = None
        self._head: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None

    def start(self) -> None:
        self.status, self._ctype, self.done, self.keep_alive = 0, b"", False, False
        self._chunks.clear()
        self._head = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done:
            self._fail(exc or ConnectionResetError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._ctype = value

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.content_type = self._ctype.decode("latin-1")
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    async def head(self) -> None:
        await self._head

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                yield self._chunks.popleft()
                continue
            if self.done:
                return
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._waiter


class HttptoolsClient:
    """A pooled HTTP/1.1 client: idle keep-alive connections reused LIFO, request heads pre-built."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._prefix = f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n".encode()
        self._idle: list[_UpstreamConnection] = []

    async def _connection(self) -> _UpstreamConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _UpstreamConnection(loop), self._host, self._port)
        return conn

    @contextlib.asynccontextmanager
    async def post(self, body: bytes, headers: dict[str, str]) -> AsyncIterator[Reply]:
        conn = await self._connection()
        conn.start()
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        assert conn.transport is not None
        conn.transport.write(b"%s%sContent-Length: %d\r\n\r\n%s" % (self._prefix, lines.encode(), len(body), body))
        reusable = False
        try:
            await conn.head()
            yield conn
            reusable = conn.done and conn.keep_alive and not conn.closed
        finally:
            if reusable:
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()


def make_client(name: str, upstream: str) -> Client:
    if name == "aiohttp":
        return AiohttpClient(upstream)
    if name == "pyreqwest":
        return PyreqwestClient(upstream)
    if name == "httptools":
        return HttptoolsClient(upstream)
    raise ValueError(f"unknown client {name!r}")


def upstream_headers(content_type: str | None, chunk_delay: str | None) -> dict[str, str]:
    headers = {"Content-Type": content_type or "application/json", "Authorization": f"Bearer {PROVIDER_KEY}"}
    if chunk_delay:
        headers[CHUNK_DELAY] = chunk_delay
    return headers


@dataclass
class Counters:
    inflight: int = 0
    """Relays with an open upstream answer: the disconnect check reads it through GET /_inflight."""


COUNTERS = Counters()


# ---------------------------------------------------------------------------------------------------------------------
# Listener 1: aiohttp's low-level server, as wardgate.cluster.proxy.listener builds it.


def aiohttp_handler(client: Client) -> Callable[[web.BaseRequest], Any]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == INFLIGHT_PATH:
            return web.Response(text=str(COUNTERS.inflight))
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="Payload Too Large\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="Payload Too Large\n")
        headers = upstream_headers(request.headers.get("Content-Type"), request.headers.get(CHUNK_DELAY))
        COUNTERS.inflight += 1
        try:
            async with client.post(body, headers) as up:
                if up.content_type.startswith("text/event-stream"):
                    response = web.StreamResponse(status=up.status, headers={"Content-Type": up.content_type})
                    await response.prepare(request)
                    async for chunk in up.chunks():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                data = await up.read()
                return web.Response(status=up.status, body=data, headers={"Content-Type": up.content_type})
        except (aiohttp.ClientError, OSError, RuntimeError):
            return web.Response(status=502, text="Bad Gateway\n")
        finally:
            COUNTERS.inflight -= 1

    return handle


async def serve_aiohttp(client: Client, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    from wardgate.cluster.proxy.listener import ListenerServer

    server = ListenerServer(aiohttp_handler(client), handler_cancellation=True, access_log=None)
    listener = await asyncio.get_running_loop().create_server(server, sock=sock, ssl=tls, backlog=1024)
    await listener.serve_forever()


# ---------------------------------------------------------------------------------------------------------------------
# Listener 2: granian's RSGI interface (`python -m granian --interface rsgi ... plumbing:rsgi_app`).


class RsgiApp:
    """The relay as an RSGI application; its client comes from PLUMBING_CLIENT and PLUMBING_UPSTREAM."""

    def __init__(self) -> None:
        self._client: Client | None = None
        self._watch = os.environ.get("PLUMBING_WATCH_DISCONNECT", "1") == "1"

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if self._client is None:
            self._client = make_client(os.environ["PLUMBING_CLIENT"], os.environ["PLUMBING_UPSTREAM"])
        if scope.path == INFLIGHT_PATH:
            proto.response_str(200, [("content-type", "text/plain")], str(COUNTERS.inflight))
            return
        length = scope.headers.get("content-length")
        if length is not None and int(length) > MAX_BODY:
            proto.response_str(413, [("content-type", "text/plain"), ("connection", "close")], "Payload Too Large\n")
            return
        parts: list[bytes] = []
        size = 0
        async for chunk in proto:
            size += len(chunk)
            if size > MAX_BODY:
                proto.response_str(413, [("content-type", "text/plain"), ("connection", "close")], "Too Large\n")
                return
            parts.append(chunk)
        headers = upstream_headers(scope.headers.get("content-type"), scope.headers.get(CHUNK_DELAY))
        if not self._watch:
            await self._relay(self._client, b"".join(parts), headers, proto)
            return
        # Without this watcher a relay notices a gone client only when its next write fails. It may start only
        # once the body is read: granian refuses to iterate the body after client_disconnect() (RSGIProtocolError).
        loop = asyncio.get_running_loop()
        relay = loop.create_task(self._relay(self._client, b"".join(parts), headers, proto))
        gone = loop.create_task(_awaited(proto.client_disconnect()))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _relay(self, client: Client, body: bytes, headers: dict[str, str], proto: Any) -> None:
        COUNTERS.inflight += 1
        try:
            async with client.post(body, headers) as up:
                answer = [("content-type", up.content_type)]
                if up.content_type.startswith("text/event-stream"):
                    transport = proto.response_stream(up.status, answer)
                    async for chunk in up.chunks():
                        await transport.send_bytes(chunk)
                    return
                proto.response_bytes(up.status, answer, await up.read())
        except (aiohttp.ClientError, OSError, RuntimeError):
            proto.response_str(502, [("content-type", "text/plain")], "Bad Gateway\n")
        finally:
            COUNTERS.inflight -= 1


async def _awaited(awaitable: Any) -> None:
    """granian's client_disconnect() returns an awaitable, not a coroutine: create_task needs one."""
    await awaitable


rsgi_app = RsgiApp()


# ---------------------------------------------------------------------------------------------------------------------
# Listener 3: an asyncio.Protocol on uvloop around httptools' request parser.


class _Refuse(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _simple(status: int, body: bytes, content_type: bytes, keep_alive: bool) -> bytes:
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        http.HTTPStatus(status).phrase.encode(),
        content_type,
        len(body),
        connection,
        body,
    )


class HttptoolsServer(asyncio.Protocol):
    """One client connection: llhttp parses, one task relays each request, in order; limits as aiohttp's."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self._pending: deque[tuple[bytes, dict[bytes, bytes], bytes, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's SSL transport is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("client gone"))

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause.status if isinstance(cause, _Refuse) else 400)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._refuse(400)

    def _refuse(self, status: int) -> None:
        assert self._transport is not None
        self._closing = True
        if self._task is None:
            phrase = http.HTTPStatus(status).phrase.encode()
            self._transport.write(_simple(status, phrase + b"\n", b"text/plain", False))
        self._transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size, self._head_size = b"", {}, [], 0, 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD:
            raise _Refuse(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_HEAD:
            raise _Refuse(431)
        self._head_size += len(name) + len(value)
        if self._head_size > 64 * MAX_HEAD:
            raise _Refuse(431)
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and int(length) > MAX_BODY:
            raise _Refuse(413)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise _Refuse(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = (self._url, self._headers, b"".join(self._body), self._parser.should_keep_alive())
        if self._task is None:
            self._task = self._loop.create_task(self._serve(*request))
        else:
            self._pending.append(request)
            assert self._transport is not None
            self._transport.pause_reading()

    async def _serve(self, url: bytes, headers: dict[bytes, bytes], body: bytes, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        started = False
        try:
            if url == INFLIGHT_PATH.encode():
                transport.write(_simple(200, str(COUNTERS.inflight).encode(), b"text/plain", keep_alive))
                return
            ctype, delay = headers.get(b"content-type"), headers.get(CHUNK_DELAY.encode())
            up_headers = upstream_headers(ctype.decode("latin-1") if ctype else None, delay.decode() if delay else None)
            COUNTERS.inflight += 1
            try:
                async with self._client.post(body, up_headers) as up:
                    status = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (
                        up.status,
                        http.HTTPStatus(up.status).phrase.encode(),
                        up.content_type.encode("latin-1"),
                    )
                    if not keep_alive:
                        status += b"Connection: close\r\n"
                    if up.content_type.startswith("text/event-stream"):
                        transport.write(status + b"Transfer-Encoding: chunked\r\n\r\n")
                        started = True
                        async for chunk in up.chunks():
                            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            if self._writable is not None:
                                await self._writable
                        transport.write(b"0\r\n\r\n")
                    else:
                        data = await up.read()
                        transport.write(status + b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            finally:
                COUNTERS.inflight -= 1
        except (aiohttp.ClientError, OSError, RuntimeError, httptools.HttpParserError):
            if not started:
                transport.write(_simple(502, b"Bad Gateway\n", b"text/plain", False))
            keep_alive = False
        finally:
            self._task = None
            if not keep_alive or self._closing:
                transport.close()
            elif self._pending:
                self._task = self._loop.create_task(self._serve(*self._pending.popleft()))
                if not self._pending:
                    transport.resume_reading()


async def serve_httptools(client: Client, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: HttptoolsServer(client), sock=sock, ssl=tls, backlog=1024)
    await listener.serve_forever()


# ---------------------------------------------------------------------------------------------------------------------
# The variant processes.


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """As wardgate's server_ssl_context: TLS 1.2 minimum, the default ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def serve(args: argparse.Namespace) -> int:
    import uvloop

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    tls = server_tls(Path(args.cert), Path(args.key)) if args.cert else None
    run = serve_aiohttp if args.listener == "aiohttp" else serve_httptools

    async def main() -> None:
        await run(make_client(args.client, args.upstream), sock, tls)

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
    return 0


@dataclass
class Variant:
    listener: str
    client: str
    tls: bool
    port: int
    process: subprocess.Popen[bytes] | None = None
    label: str = field(init=False)
    _log: Any = None

    def __post_init__(self) -> None:
        self.label = f"{self.listener}/{self.client}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, upstream: str, cert: Path, key: Path, log: Path) -> None:
        out = self._log = log.open("ab")
        if self.listener.startswith("granian"):
            command = [
                sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--workers", "1",
                "--runtime-threads", "1", "--no-ws", "--host", "127.0.0.1", "--port", str(self.port),
                "--working-dir", str(BENCH), "--backlog", "1024",
            ]  # fmt: skip
            if self.tls:
                command += ["--ssl-certificate", str(cert), "--ssl-keyfile", str(key)]
            command += os.environ.get("PLUMBING_GRANIAN_ARGS", "").split()  # e.g. "--http1-buffer-size 8192"
            command.append("plumbing:rsgi_app")
            env = {**os.environ, "PLUMBING_CLIENT": self.client, "PLUMBING_UPSTREAM": upstream}
            env["PLUMBING_WATCH_DISCONNECT"] = "0" if self.listener == "granian-nowatch" else "1"
        else:
            command = [
                sys.executable, str(Path(__file__).resolve()), "serve", "--listener", self.listener,
                "--client", self.client, "--upstream", upstream, "--port", str(self.port),
            ]  # fmt: skip
            if self.tls:
                command += ["--cert", str(cert), "--key", str(key)]
            env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        return [self.process.pid, *(int(p) for p in children.stdout.split())]

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert, key_file = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key_file


# ---------------------------------------------------------------------------------------------------------------------
# Functional checks: raw sockets against a variant's plain-HTTP port.

_MESSAGES = b'"messages":[{"role":"user","content":"Say something short about gateways."}]'
_CHAT = b'{"model":"gpt-4o-mini",%s}' % _MESSAGES
_STREAM = b'{"model":"gpt-4o-mini","stream":true,%s}' % _MESSAGES


def _post(body: bytes, extra: str = "") -> bytes:
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """One response from `sock` (leftover bytes stay in `buffer`); (0, b"") when the connection closed first."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return 0, b""
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).decode("latin-1").lower()
    del buffer[:end]
    status = int(head.split(" ", 2)[1])
    if "transfer-encoding: chunked" in head:
        while not buffer.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
        body = bytes(buffer)
        buffer.clear()
        return status, body
    length = 0
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    while len(buffer) < length:
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, body


def _closed_after(sock: socket.socket, buffer: bytearray) -> bool:
    if buffer:
        return False
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def _exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, bool]:
    """Send raw bytes, read one answer: (status or 0 when closed without one, connection closed after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        buffer = bytearray()
        try:
            status, _ = _read_response(sock, buffer)
        except ConnectionResetError:
            return 0, True
        except TimeoutError:
            return -1, False
        return status, status == 0 or _closed_after(sock, buffer)


def _inflight(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {INFLIGHT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        _, body = _read_response(sock, bytearray())
        return body.decode().strip()


def check_keepalive(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        buffer = bytearray()
        statuses = []
        for _ in range(3):
            sock.sendall(_post(_CHAT))
            statuses.append(_read_response(sock, buffer)[0])
    return f"{'yes' if statuses == [200, 200, 200] else 'NO'} ({'/'.join(map(str, statuses))})"


def check_streaming(port: int) -> str:
    """The fake provider pauses 150 ms between chunks: each chunk must reach the client on its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post(_STREAM, f"{CHUNK_DELAY}: 150\r\n"))
        arrivals: list[float] = []
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            piece = sock.recv(65536)
            if not piece:
                break
            if b"data:" in piece:
                arrivals.append(time.monotonic())
            data += piece
    spread = arrivals[-1] - arrivals[0] if arrivals else 0.0
    ok = len(arrivals) >= 5 and spread > 0.6 and b"[DONE]" in data
    return f"{'yes' if ok else 'NO'} ({len(arrivals)} reads over {spread:.1f} s)"


def check_disconnect(port: int) -> str:
    """A stream with 1 s between chunks: the client leaves after the first; the relay must end at once."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_post(_STREAM, f"{CHUNK_DELAY}: 1000\r\n"))
    data = b""
    while b"data:" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    during = _inflight(port)
    sock.close()
    time.sleep(0.4)
    after = _inflight(port)
    return f"{'yes' if (during, after) == ('1', '0') else 'NO'} (relays {during} -> {after} in 0.4 s)"


def check_size(port: int) -> str:
    declared, _ = _exchange(port, _post(b"x" * 65536).replace(b"Content-Length: 65536", b"Content-Length: 2097152"))
    chunk = b"x" * 65536
    chunked = (
        (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 32
        + b"0\r\n\r\n"
    )
    streamed, _ = _exchange(port, chunked)
    ok = declared == 413 and streamed == 413
    return f"{'yes' if ok else 'NO'} (CL {declared}, chunked {streamed})"


def check_smuggling(port: int) -> str:
    """Content-Length and Transfer-Encoding together: refused (400), or at least the connection closed after."""
    raw = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"0\r\n\r\nGET {INFLIGHT_PATH} HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode()
    status, closed = _exchange(port, raw)
    verdict = "yes" if status == 400 else ("closes" if closed else "NO")
    return f"{verdict} ({status}{', closed' if closed else ''})"


def check_malformed(port: int) -> str:
    cases = [
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    ]
    statuses = [_exchange(port, raw)[0] for raw in cases]
    ok = all(s == 400 for s in statuses)
    return f"{'yes' if ok else 'NO'} ({'/'.join(map(str, statuses))})"


def check_big_header(port: int) -> str:
    status, _ = _exchange(port, _post(_CHAT, f"X-Big: {'a' * 10000}\r\n"))
    return f"{'yes' if status in (400, 431) else 'NO'} ({status})"


def check_http2(url: str) -> str:
    out = subprocess.run(
        ["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}", url + INFLIGHT_PATH],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return "yes" if out.strip() == "2" else f"no (h{out.strip() or '?'})"


CHECKS: list[tuple[str, Callable[[int], str]]] = [
    ("stream", check_streaming),
    ("disconnect", check_disconnect),
    ("size limit", check_size),
    ("keep-alive", check_keepalive),
    ("CL+TE", check_smuggling),
    ("malformed", check_malformed),
    ("10 KB header", check_big_header),
]


def run_checks(plain: list[Variant], tls: dict[str, Variant]) -> list[tuple[str, dict[str, str]]]:
    rows = []
    for variant in plain:
        results: dict[str, str] = {}
        for name, check in CHECKS:
            try:
                results[name] = check(variant.port)
            except Exception as exc:  # a check that crashes is a finding, not a bench failure
                results[name] = f"NO ({type(exc).__name__})"
        secure = tls.get(variant.label)
        results["HTTP/2 (TLS)"] = check_http2(secure.url) if secure is not None else "-"
        rows.append((variant.label, results))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The driver.


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def version(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:  # granian and pyreqwest are needed only by their own variants
            return "(not installed)"

    names = ("aiohttp", "uvloop", "granian", "pyreqwest", "httptools", "cryptography")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    python = sys.version.split()[0]
    return f"CPython {python}, " + ", ".join(f"{n} {version(n)}" for n in names) + f"; {wrk.strip()}"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads) so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve", help="run one variant (aiohttp or httptools listener) in this process")
    server.add_argument("--listener", choices=("aiohttp", "httptools"), required=True)
    server.add_argument("--client", choices=CLIENTS, required=True)
    server.add_argument("--upstream", required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--cert")
    server.add_argument("--key")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the table shows medians")
    parser.add_argument("--variants", help="comma-separated listener/client pairs (default: all 9)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-HTTP column")
    parser.add_argument("--no-sse", action="store_true", help="skip the SSE rows")
    parser.add_argument("--checks-only", action="store_true")
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args)
    return drive(args)


def drive(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH))
    from gateway import BODY, free_port, run_wrk, wait_http  # type: ignore[import-not-found]  # bench/ is no package

    pairs = DEFAULT_VARIANTS
    if args.variants:
        pairs = [(p.split("/")[0], p.split("/")[1]) for p in args.variants.split(",")]
    root = Path(tempfile.mkdtemp(prefix="wardgate-plumbing-"))
    cert, key = make_certificate(root)
    log = root / "variants.log"
    print(f"# {_versions()}")
    print(f"# {os.cpu_count()} cores; load average at start {_load()}; {args.rounds} rounds of {args.duration:g} s")
    provider_port = free_port()
    command = [sys.executable, "-m", "tests.fakes.openai_provider", "--host", "127.0.0.1"]
    command += ["--port", str(provider_port), "--api-key", PROVIDER_KEY]
    provider = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    upstream = f"http://127.0.0.1:{provider_port}"
    variants: list[Variant] = []
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        wait_http(upstream + "/v1/models")
        for listener, client in pairs:
            for tls in (True, False):
                variant = Variant(listener, client, tls, free_port())
                variant.start(upstream, cert, key, log)
                variants.append(variant)
        for variant in variants:
            try:
                wait_http(variant.url + INFLIGHT_PATH, insecure if variant.tls else None, timeout=180)
            except OSError:
                print(f"{variant.label} ({variant.url}) did not start; its log:\n{log.read_text()[-3000:]}")
                raise
        plain = [v for v in variants if not v.tls]
        secure = {v.label: v for v in variants if v.tls}
        print_checks(run_checks(plain, secure))
        if args.checks_only:
            return 0
        pids = {v.url: v.pids() for v in variants}
        pids[upstream] = [provider.pid]
        measure(args, variants, upstream, root, BODY, run_wrk, pids)
        print(f"\n# load average at the end {_load()}")
        return 0
    finally:
        for variant in variants:
            variant.stop()
        provider.terminate()
        provider.wait(timeout=10)
        if os.environ.get("PLUMBING_KEEP_LOGS"):
            print(f"# logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def print_checks(rows: list[tuple[str, dict[str, str]]]) -> None:
    names = [name for name, _ in CHECKS] + ["HTTP/2 (TLS)"]
    widths = {name: max(len(name), *(len(r[name]) for _, r in rows)) for name in names}
    print("\nFunctional checks (plain HTTP port; HTTP/2 with curl over TLS):")
    print(f"{'variant':22} " + " | ".join(f"{name:{widths[name]}}" for name in names))
    for label, results in rows:
        print(f"{label:22} " + " | ".join(f"{results[name]:{widths[name]}}" for name in names))


Cell = tuple[str, str]  # (body, scheme)


def measure(
    args: argparse.Namespace,
    variants: list[Variant],
    upstream: str,
    root: Path,
    body: dict[str, Any],
    run_wrk: Callable[..., Any],
    pids: dict[str, list[int]],
) -> None:
    bodies = {"json": body, "sse": {**body, "stream": True, "stream_options": {"include_usage": True}}}
    cells: list[Cell] = [("json", "https")]
    if not args.no_sse:
        cells.append(("sse", "https"))
    if not args.no_plain:
        cells.append(("json", "http"))
    proxied = {"Content-Type": "application/json", "Authorization": "Bearer client-token"}
    direct = {"Content-Type": "application/json", "Authorization": f"Bearer {PROVIDER_KEY}"}
    # results[(label, body, scheme, conc)] = [(req/s, p50 ms, errors, CPU µs per request of the proxy), ...]
    results: dict[tuple[str, str, str, int], list[tuple[float, float, int, float]]] = {}
    print("# warm-up: 1 s at c=32 on every target (TLS handshakes, pools, first calls)", flush=True)
    for mode, scheme in cells:
        for v in variants:
            if v.tls == (scheme == "https"):
                run_wrk(v.url + CHAT_PATH, proxied, bodies[mode], 32, 1, root)
    for number in range(args.rounds):
        print(f"# round {number + 1}/{args.rounds}, load average {_load()}", flush=True)
        for mode, scheme in cells:
            targets = [("direct", upstream, direct)] + [
                (v.label, v.url, proxied) for v in variants if v.tls == (scheme == "https")
            ]
            for conc in (1, 32):
                for label, base, headers in targets:
                    before = cpu_seconds(pids[base])
                    r = run_wrk(base + CHAT_PATH, headers, bodies[mode], conc, args.duration, root)
                    cpu = (cpu_seconds(pids[base]) - before) / max(r.requests, 1) * 1e6
                    key = (label, mode, scheme, conc)
                    results.setdefault(key, []).append((r.requests_per_second, r.p50_ms, r.errors, cpu))
    print_results(results, cells, [v.label for v in variants if v.tls], args.rounds)


def print_results(
    results: dict[tuple[str, str, str, int], list[tuple[float, float, int, float]]],
    cells: list[Cell],
    labels: list[str],
    rounds: int,
) -> None:
    def med(key: tuple[str, str, str, int], index: int) -> float:
        return statistics.median(r[index] for r in results[key])

    for mode, scheme in cells:
        title = f"{mode.upper()} answer, client -> proxy over {scheme.upper()}, proxy -> provider plain HTTP"
        print(f"\n{title} (medians of {rounds} interleaved rounds; direct = wrk straight to the provider)")
        print(
            f"{'variant':22} {'c=32 req/s':>10} {'x direct':>8} {'range':>13} {'c=1 p50 ms':>10} "
            f"{'+ms':>6} {'c=1 req/s':>9} {'errors':>6} {'CPU us/req':>10}"
        )
        base32 = med(("direct", mode, scheme, 32), 0)
        base_p50 = med(("direct", mode, scheme, 1), 1)
        for label in ["direct", *labels]:
            key32, key1 = (label, mode, scheme, 32), (label, mode, scheme, 1)
            rps = [r[0] for r in results[key32]]
            errors = sum(r[2] for r in results[key32]) + sum(r[2] for r in results[key1])
            p50 = med(key1, 1)
            print(
                f"{label:22} {med(key32, 0):10.0f} {med(key32, 0) / base32:8.2f} "
                f"{min(rps):6.0f}-{max(rps):<6.0f} {p50:10.2f} {p50 - base_p50:6.2f} {med(key1, 0):9.0f} {errors:6d} "
                f"{med(key32, 3):10.0f}"
            )
        print(
            "(CPU us/req: user+system CPU of the proxy's processes, all threads, per request at c=32; "
            "direct: the provider's)"
        )


if __name__ == "__main__":
    sys.exit(main())
