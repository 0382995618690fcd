"""The relay's upstream client: pooled keep-alive HTTP/1.1 on httptools (llhttp), one asyncio.Protocol per
connection. Chosen by measurement (docs/http-plumbing.md): 45-70 % less CPU per request than aiohttp's
ClientSession in the same proxy. aiohttp's client stays for everything that is not the relay.

    Pool.request(method, endpoint, target, headers, body, timeouts)
      ─▶ an idle connection for (scheme, host, port), newest first, or a new one (connect timeout; TLS
         verified with the default context) ─▶ head + body in one write
      ─▶ Reply: status, reason, headers; then read()/readany()/chunks(), each wait bounded by the read timeout
      ─▶ on exit: read to the end and keep-alive ─▶ back to the pool; anything else ─▶ closed

A reused connection that the upstream closed while it sat idle fails before any byte of its answer; that
try is repeated once on a new connection (the keep-alive race every pooled client has) when the request
may be replayed: an idempotent method, or an Idempotency-Key header (as Go's net/http decides). A POST is
not sent twice behind the caller's back: its failure goes to the gateway's retry policy, like any reset.
Errors are typed (UpstreamError: ConnectFailed, ConnectTimeout, ReadTimeout, ResponseBroken) so that
retries keep their meaning. The upstream is not trusted with memory: a response head is capped at MAX_HEAD
bytes, and reading pauses while MAX_UNREAD bytes wait for the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict

MAX_HEAD = 64 * 1024
"""The largest response head (status line and headers) accepted from an upstream."""
MAX_UNREAD = 512 * 1024
"""Reading from the upstream pauses while this much of its body waits to be relayed (resumes below 1/4)."""
IDLE_TIMEOUT = 15.0
"""An idle pooled connection is closed after this long (aiohttp's keep-alive default)."""
MAX_IDLE = 256
"""Idle connections kept per (scheme, host, port); more are closed when they come back."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAFE_TARGET = re.compile(r"[\x21-\x7e]+")
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_REPLAY_KEYS = frozenset({"idempotency-key", "x-idempotency-key"})
_SKIPPED = frozenset({"content-length", "transfer-encoding", "connection"})
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


class UpstreamError(Exception):
    """The upstream call failed; `kind` is how attempts.py counts it: connect, timeout or reset."""

    kind = "reset"


class ConnectFailed(UpstreamError):
    kind = "connect"


class ConnectTimeout(UpstreamError, TimeoutError):
    kind = "connect"


class ReadTimeout(UpstreamError, TimeoutError):
    kind = "timeout"


class ResponseBroken(UpstreamError):
    """The connection closed or the answer was malformed (before or after the status line)."""


class BadRequestHead(UpstreamError, ValueError):
    """A header or request target that cannot be sent as HTTP/1.1 (CR, LF, NUL, not a token)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float | None
    read: float | None


class _Connection(asyncio.Protocol):
    """One upstream connection; parses one response at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, head_request: bool = False) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset(head_request)

    def _reset(self, head_request: bool) -> None:
        self.head_request = head_request
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.headed = False
        self.done = False
        self.keep_alive = False
        self.received = 0
        self.until_eof = False
        self._chunks: deque[bytes] = deque()
        self._unread = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def begin(self, head_request: bool) -> None:
        if self._paused and self.transport is not None:  # the last answer ended with its body still queued
            self.transport.resume_reading()
        self._reset(head_request)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        if self.headed and self.until_eof and exc is None:
            self._complete(keep_alive=False)  # a body delimited by the end of the connection
            return
        self._fail(ResponseBroken(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        before = self.received
        self.received += len(data)
        if self.done:  # bytes after a complete answer, never asked for: the connection is not reused
            self._fail(ResponseBroken("upstream sent bytes after its answer"))
        elif not self.headed and before > MAX_HEAD:  # llhttp has no limit of its own
            self._fail(ResponseBroken(f"upstream response head over {MAX_HEAD} bytes"))
        else:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                cause = exc.__context__
                self._fail(cause if isinstance(cause, UpstreamError) else ResponseBroken(f"bad upstream answer: {exc}"))
        if self._error is not None and self.transport is not None:
            self.transport.abort()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:  # a second answer after this one, never asked for (pipelined junk, a smuggled head)
            raise ResponseBroken("upstream sent bytes after its answer")

    def on_status(self, reason: bytes) -> None:
        self._count(len(reason))
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self._raw.append((name, value))

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            raise ResponseBroken(f"upstream response head over {MAX_HEAD} bytes")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise ResponseBroken("upstream switched protocols, which was not asked for")
            self._raw, self.reason, self._head_bytes = [], "", 0  # an interim answer (103 Early Hints): skipped
            return
        self.status = status
        headers = self.headers
        coding: str | None = None
        for name, value in self._raw:
            key, text = name.decode("latin-1"), value.decode("utf-8", "surrogateescape").rstrip(" \t")
            headers.add(key, text)
            if len(key) == 17 and key.lower() == "transfer-encoding":
                coding = text.rpartition(",")[2].strip(" \t").lower()  # the last coding of the last field
        self._raw = []
        # RFC 9112 6.3, as llhttp frames it: chunked only when it is the final coding; any other
        # Transfer-Encoding, or no Content-Length, and the body runs to the end of the connection.
        framed = coding == "chunked" if coding is not None else "Content-Length" in headers
        self.until_eof = not framed and status not in (204, 304) and not self.head_request
        self.headed = True
        if self.head_request:  # llhttp cannot be told that no body follows: the connection is not reused
            self._complete(keep_alive=False)
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        self._chunks.append(body)
        self._unread += len(body)
        if self._unread > MAX_UNREAD and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headed or self.done:  # the end of an interim answer, or of a HEAD answer's body
            return
        self._complete(self._parser.should_keep_alive())

    def _complete(self, keep_alive: bool) -> None:
        self.done, self.keep_alive = True, keep_alive
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.keep_alive = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # the reader's side

    async def _wait(self, within: float | None) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = None if within is None else self._loop.call_later(within, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def head(self, within: float | None) -> None:
        while not self.headed:
            if self._error is not None:
                raise self._error
            await self._wait(within)

    async def readany(self, within: float | None) -> bytes:
        """What has arrived (at least one byte), or b"" at the end of the body."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._unread = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(within)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("upstream sent nothing within the read timeout"))


class Reply:
    """An upstream's answer: the head now, the body as it is read."""

    __slots__ = ("_conn", "_read_timeout", "headers", "reason", "status")

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return int(raw) if raw is not None and raw.isdigit() else None

    async def readany(self) -> bytes:
        return await self._conn.readany(self._read_timeout)

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._conn.readany(self._read_timeout):
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.readany(self._read_timeout):
            yield chunk

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed, not reused."""
        conn = self._conn
        conn.keep_alive = False
        if conn.transport is not None:
            conn.transport.close()


Key = tuple[str, str, int]


class Pool:
    """Keep-alive connections per (scheme, host, port), reused newest first."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._idle: dict[Key, list[_Connection]] = {}
        self._swept = 0.0

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _take(self, key: Key, now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            _close(conn)
        return None

    def _give_back(self, key: Key, conn: _Connection) -> None:
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE:
            _close(conn)
        else:
            idle.append(conn)
        if now - self._swept > IDLE_TIMEOUT / 3:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < IDLE_TIMEOUT]
            for conn in idle:
                if conn.closed or now - conn.idle_since >= IDLE_TIMEOUT:
                    _close(conn)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    async def _connect(self, key: Key, head_request: bool, within: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, head_request),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"no connection to {host}:{port} within {within:g} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeouts: Timeouts,
    ) -> AsyncIterator[Reply]:
        """Send one request; the reply's head is read before this yields. Leaving the block gives the
        connection back when its answer was read to the end, and closes it otherwise."""
        head, replayable = _request_head(method, target, headers, body, _host_header(scheme, host, port))
        key = (scheme, host, port)
        head_request = method == "HEAD"
        conn: _Connection | None = None
        for again in (False, True):
            conn = None if again else self._take(key, time.monotonic())
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, head_request, timeouts.connect)
            else:
                conn.begin(head_request)
            assert conn.transport is not None
            if len(body) > 65536:
                conn.transport.writelines((head, body))
            else:
                conn.transport.write(head + body if body else head)
            try:
                await conn.head(timeouts.read)
                break
            except ResponseBroken:
                _close(conn)
                if reused and replayable and conn.received == 0:  # closed while idle, before a byte of its answer
                    continue
                raise
            except BaseException:
                _close(conn)
                raise
        assert conn is not None
        reusable = False
        try:
            yield Reply(conn, timeouts.read)
            reusable = conn.done and conn.keep_alive and not conn.closed
        finally:
            if reusable:
                self._give_back(key, conn)
            else:
                _close(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close(conn)
        self._idle.clear()


def _close(conn: _Connection) -> None:
    conn.keep_alive = False
    if conn.transport is not None and not conn.closed:
        conn.transport.close()


def _host_header(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"


_names: dict[str, bool] = {}
"""Header names already checked to be tokens; True for the ones this module writes itself."""


def _request_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, host: str
) -> tuple[bytes, bool]:
    """The request line and headers, checked: a CR, LF or NUL could smuggle a second request upstream. HOST
    is used when the headers have no Host; the target is percent-encoded where it is not printable ASCII.
    The flag says whether the request may be replayed on a stale connection."""
    if not _TOKEN.fullmatch(method):
        raise BadRequestHead(f"method {method!r} is not an HTTP token")
    if not _SAFE_TARGET.fullmatch(target):
        try:
            target = urllib.parse.quote(target or "/", safe=_PRINTABLE, errors="surrogateescape")
        except UnicodeEncodeError as exc:
            raise BadRequestHead(f"the request target cannot be encoded: {exc.reason}") from exc
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_host, replayable = False, method in _IDEMPOTENT
    for name, value in headers:
        skipped = _names.get(name)
        if skipped is None:
            if not _TOKEN.fullmatch(name):
                raise BadRequestHead(f"header name {name!r} is not an HTTP token")
            skipped = name.lower() in _SKIPPED
            if len(_names) < 4096:
                _names[name] = skipped
        if skipped:
            continue
        if len(name) == 4 and name.lower() == "host":
            has_host = True
        elif len(name) >= 15 and name.lower() in _REPLAY_KEYS:
            replayable = True
        lines.append(f"{name}: {value}\r\n")
    if not has_host:
        lines.append(f"Host: {host}\r\n")
    if body or method not in _BODYLESS:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines) or "\x00" in text:
        raise BadRequestHead("a header value holds CR, LF or NUL")
    try:
        return text.encode("utf-8", "surrogateescape"), replayable
    except UnicodeEncodeError as exc:
        raise BadRequestHead(f"a header cannot be encoded: {exc.reason}") from exc
