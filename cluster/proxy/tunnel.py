"""The tunnel listener: the same request pipeline as the public listener, for connected clients.

    client app ─HTTP─▶ <service>.<zone> = the gateway address, over WireGuard ─▶ node wg interface
    ─▶ a socket bound to that interface only (SO_BINDTODEVICE): packets that did not come through the
       tunnel never reach it, whatever source address they carry
    ─▶ tunnel_gateway: identity = the live CLIENT Session holding the source address (cryptokey routing
       guarantees a peer can only send from its own allowed IPs) ─▶ Gateway's pipeline, unchanged:
       dynamic config, policies, plugins, secret injection, upstream, access log (listener "tunnel")

Host-based dispatch on one address: every Service, public or not, is `<service>.<dns_label>.<domain>`.
The interface belongs to the node agent and can disappear and come back (agent restart, wireguard-go
killed); `TunnelListener` polls its index and rebinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from wardgate.cluster.authorize.state import GatewayState
from wardgate.cluster.errors import Refused
from wardgate.cluster.identity.addresses import TunnelIdentities
from wardgate.cluster.identity.authenticate import Identity
from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.proxy.connections import ConnectionGuard, ConnectionLimits
from wardgate.cluster.proxy.exchange import openai_error
from wardgate.cluster.proxy.listener import ListenerServer, Malformed
from wardgate.cluster.proxy.revocation import LiveConnections
from wardgate.cluster.proxy.server import Gateway, Handler, Listener, Telemetry
from wardgate.cluster.proxy.upstream import Upstream
from wardgate.cluster.usage.meter import Meter

log = logging.getLogger(__name__)

_IP_FREEBIND = 15  # linux/in.h: bind before the agent has put the address on the interface
_IPV6_FREEBIND = 78  # linux/in6.h


async def _no_site(request: web.BaseRequest) -> web.StreamResponse:
    refused = Refused.NOT_ON_TUNNEL
    return openai_error(refused.status, refused.message, refused.kind, refused.code)


def tunnel_listener(identities: TunnelIdentities) -> Listener:
    """The tunnel's strategy: the Session holding the source address is the identity. Bearer tokens and
    cookies are not looked at; every Service, public or not, is served."""

    def identify(request: web.BaseRequest) -> Identity:
        return identities.identify(request.remote)

    return Listener(
        name="tunnel",
        scheme="http",
        public_only=False,
        identify=identify,
        unauthenticated=Refused.NO_TUNNEL_SESSION,
    )


def tunnel_gateway(
    *,
    zone: str,
    identities: TunnelIdentities,
    state: Callable[[], GatewayState],
    upstream: Upstream,
    access_log: AccessLog,
    node: str,
    telemetry: Telemetry | None = None,
    live: LiveConnections | None = None,
    meter: Meter | None = None,
    mcp_sessions: SealedValues,
) -> Gateway:
    return Gateway(
        domain=zone,
        listener=tunnel_listener(identities),
        state=state,
        upstream=upstream,
        access_log=access_log,
        site=_no_site,
        node=node,
        telemetry=telemetry,
        live=live,
        meter=meter,
        mcp_sessions=mcp_sessions,
    )


def _interface_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _bound_socket(address: str, port: int, interface: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # SECURITY: only connections that arrived on the WireGuard interface; the source address is trusted.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TunnelListener:
    """Serves `handler` on the gateway addresses for connections arriving on `interface`; `run()` until cancelled."""

    def __init__(
        self,
        handler: Handler,
        interface: str,
        addresses: list[str],
        port: int,
        poll_interval: float = 0.5,
        limits: ConnectionLimits | None = None,
        live: LiveConnections | None = None,
        malformed: Malformed | None = None,
    ) -> None:
        limits = limits or ConnectionLimits()
        options = limits.server_options()
        self._server = ListenerServer(
            handler, malformed=malformed, handler_cancellation=True, access_log=None, **options
        )
        # Per tunnel address: a connected client cannot exhaust the node's descriptors either.
        on_close = live.forget if live is not None else None
        self._guard = ConnectionGuard(self._server, limits, name="tunnel", cap=True, on_close=on_close)
        self._interface = interface
        self._addresses = addresses
        self._port = port
        self._poll = poll_interval
        self._servers: list[asyncio.Server] = []
        self._bound_index: int | None = None
        self._reported: str | None = None

    async def run(self) -> None:
        try:
            while True:
                index = _interface_index(self._interface)
                if index != self._bound_index:
                    await self._close()
                    if index is not None:
                        await self._open(index)
                await asyncio.sleep(self._poll)
        finally:
            await self._close()

    async def _open(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            for address in self._addresses:
                sock = _bound_socket(address, self._port, self._interface)
                self._servers.append(await loop.create_server(self._guard, sock=sock, backlog=1024))
        except OSError as exc:
            await self._close()
            problem = f"cannot listen on {self._interface} port {self._port}: {exc}"
            if problem != self._reported:  # retried every poll; logged once
                log.error("tunnel listener: %s (needs CAP_NET_RAW and CAP_NET_BIND_SERVICE, or root)", problem)
                self._reported = problem
            return
        self._bound_index, self._reported = index, None
        where = ", ".join(f"{a}:{self._port}" for a in self._addresses)
        log.info("tunnel listener on %s (interface %s, index %d)", where, self._interface, index)

    async def _close(self) -> None:
        servers, self._servers, self._bound_index = self._servers, [], None
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def shutdown(self, grace: float = 5.0) -> None:
        await self._close()
        await self._server.shutdown(grace)
