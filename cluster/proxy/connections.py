"""Connection limits of a listener: how long a client may take to send its request head, how many
connections one client address may hold, how long an idle keep-alive connection lives.

    accept ─(TLS handshake, bounded by header_timeout)─▶ ConnectionGuard() makes a _Guarded protocol around
    aiohttp's RequestHandler ─▶ connection_made: over the per-address cap? abort at once (counted)
    ─▶ head timer armed at accept + header_timeout ─▶ the first request head parsed (request_factory)
       disarms it; it fires first: abort (counted)
    ─▶ between requests: aiohttp's keepalive_timeout (= idle_timeout) closes an idle connection
    ─▶ connection_lost: the address's count drops, the revocation registry forgets the transport

Without these, a client that opens connections and sends half a header holds a file descriptor each for
as long as it likes, and a thousand of them lock every client out (the process's descriptor limit).
The cap counts from the completed TLS handshake (the address is not known to us before); handshakes
themselves are bounded by `header_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

WARN_EVERY = 10.0
"""Seconds between two warnings about refused or timed-out connections (each one is counted)."""


class ConnectionLimits(BaseModel):
    """`[limits]` in cluster.toml: applied to the public, admin and tunnel listeners (the cap: public and tunnel)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds from accept to a complete first request head, TLS handshake included; then the connection is cut."""
    idle_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a keep-alive connection may wait for its next request."""
    max_connections_per_ip: int = Field(default=256, ge=1, le=1_000_000)
    """Open connections one client address may hold on the public (and tunnel) listener; beyond: closed at once."""

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments for aiohttp's web.Server / AppRunner (its RequestHandler)."""
        return {"keepalive_timeout": self.idle_timeout}

    def tls_options(self) -> dict[str, Any]:
        """Keyword arguments for loop.create_server with TLS: a handshake (or a TLS close) cannot hold a socket."""
        return {"ssl_handshake_timeout": self.header_timeout, "ssl_shutdown_timeout": self.header_timeout}


class ConnectionGuard:
    """The protocol factory of a listener (pass it to loop.create_server): wraps `server`'s handlers."""

    def __init__(
        self,
        server: web.Server,
        limits: ConnectionLimits,
        *,
        name: str,
        cap: bool,
        on_close: Callable[[asyncio.Transport], None] | None = None,
    ) -> None:
        self._server = server
        self._limits = limits
        self._name = name
        self._cap = limits.max_connections_per_ip if cap else None
        self._on_close = on_close
        self._per_address: dict[str, int] = {}
        self._heads: dict[RequestHandler, asyncio.TimerHandle] = {}
        self.refused = 0
        """Connections closed at once because their address was at the cap."""
        self.timed_out = 0
        """Connections cut because their first request head did not arrive in time."""
        self._warned = 0.0
        original = server.request_factory

        def request_factory(message: Any, payload: Any, protocol: RequestHandler, writer: Any, task: Any) -> Any:
            timer = self._heads.pop(protocol, None)
            if timer is not None:
                timer.cancel()
            return original(message, payload, protocol, writer, task)

        # Handlers read the factory when they are made: wrap it before the first connection.
        server.request_factory = request_factory

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._server(), time.monotonic())

    def connections(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def _admit(self, address: str) -> bool:
        count = self._per_address.get(address, 0)
        if self._cap is not None and count >= self._cap:
            self.refused += 1
            self._warn()
            return False
        self._per_address[address] = count + 1
        return True

    def _release(self, address: str) -> None:
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)

    def _arm(self, handler: RequestHandler, transport: asyncio.Transport, accepted: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, accepted + self._limits.header_timeout - time.monotonic())
        self._heads[handler] = loop.call_later(delay, self._head_late, handler, transport)

    def _head_late(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if self._heads.pop(handler, None) is None:
            return
        self.timed_out += 1
        self._warn()
        # abort, not close: a TLS close waits for the peer's close_notify, which this peer will not send.
        transport.abort()

    def _disarm(self, handler: RequestHandler) -> None:
        timer = self._heads.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "%s listener: %d connections refused at the per-address cap (%s), %d cut for a late request head "
                "(%.0f s) so far",
                self._name,
                self.refused,
                self._cap,
                self.timed_out,
                self._limits.header_timeout,
            )


class _Guarded(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler, with the guard's bookkeeping around it."""

    __slots__ = ("_accepted", "_address", "_guard", "_handler", "_transport")

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler, accepted: float) -> None:
        self._guard = guard
        self._handler = handler
        self._accepted = accepted
        self._address: str | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's TLS transport is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        if not self._guard._admit(address):
            transport.abort()
            return
        self._address, self._transport = address, transport
        self._guard._arm(self._handler, transport, self._accepted)
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None or self._transport is None:
            return
        guard, transport = self._guard, self._transport
        guard._release(self._address)
        guard._disarm(self._handler)
        self._address = None
        if guard._on_close is not None:
            guard._on_close(transport)
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> None:
        self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()
