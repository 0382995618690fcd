"""Private DNS for Service names, served on the tunnel's gateway addresses (UDP port 53).

    query ─▶ answer(query bytes, Zone) (pure) ─▶ reply bytes
        <service>.<zone>  A / AAAA ─▶ the gateway address (one listener, Host-based dispatch)
        unknown service in the zone ─▶ NXDOMAIN;  other record types ─▶ NOERROR, no data
        names outside the zone ─▶ REFUSED, so stub resolvers try their next nameserver
        unparseable ─▶ dropped

`DnsServer` binds to the WireGuard interface only (SO_BINDTODEVICE), so it answers connected clients
and nobody else, and rebinds when the interface is recreated. The zone comes from each PeerSet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

TTL = 5
"""Seconds: Services come and go; answers are cheap."""
_IP_FREEBIND = 15
_IPV6_FREEBIND = 78


class DnsSettings(BaseModel):
    """Private DNS for `<service>.<zone>` on the tunnel's gateway addresses (UDP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    port: int = Field(default=53, ge=1, le=65535)


@dataclass(frozen=True, slots=True)
class Zone:
    """What the server answers for: `<service>.<name>` for each service, with the gateway addresses."""

    name: str
    services: frozenset[str]
    ipv4: str
    ipv6: str


def answer(query: bytes, zone: Zone) -> bytes | None:
    """The reply to one DNS query over UDP, or None to drop it."""
    try:
        request = dns.message.from_wire(query)
    except dns.exception.DNSException:
        return None
    if request.flags & dns.flags.QR:
        return None
    response = dns.message.make_response(request)
    if request.opcode() != dns.opcode.QUERY or len(request.question) != 1:
        response.set_rcode(dns.rcode.NOTIMP if request.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
        return response.to_wire()
    question = request.question[0]
    origin = dns.name.from_text(zone.name)
    qname = question.name
    if question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(origin):
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    response.flags |= dns.flags.AA
    relative = qname.relativize(origin)
    labels = [label.decode("ascii", "replace").lower() for label in relative.labels]
    if qname == origin:
        return response.to_wire()
    if len(labels) != 1 or labels[0] not in zone.services:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    address = {dns.rdatatype.A: zone.ipv4, dns.rdatatype.AAAA: zone.ipv6}.get(question.rdtype)
    if address is not None:
        response.answer.append(dns.rrset.from_text(qname, TTL, "IN", dns.rdatatype.to_text(question.rdtype), address))
    return response.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # the selector loop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        zone = self._server.zone
        reply = answer(data, zone) if zone is not None else None
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


def _bound_socket(address: str, port: int, interface: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _interface_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class DnsServer:
    """Answers `zone` on its gateway addresses, on `interface` only; `run()` until cancelled."""

    def __init__(self, interface: str, port: int = 53, poll_interval: float = 0.5) -> None:
        self._interface = interface
        self._port = port
        self._poll = poll_interval
        self._zone: Zone | None = None
        self._wake = asyncio.Event()
        self._transports: list[asyncio.DatagramTransport] = []
        self._bound: tuple[int, str, str] | None = None
        self._reported: str | None = None

    @property
    def zone(self) -> Zone | None:
        return self._zone

    @zone.setter
    def zone(self, zone: Zone | None) -> None:
        self._zone = zone
        self.nudge()

    def nudge(self) -> None:
        """Look at the interface and the zone now, not at the next poll (a new zone, a recreated interface):
        a restarted agent answers as soon as it knows its zone, not up to a poll interval later."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                index = _interface_index(self._interface)
                zone = self._zone
                wanted = (index, zone.ipv4, zone.ipv6) if index is not None and zone else None
                if wanted != self._bound:
                    self._close()
                    if wanted is not None:
                        await self._open(wanted)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._wake.wait()
        finally:
            self._close()

    async def _open(self, wanted: tuple[int, str, str]) -> None:
        loop = asyncio.get_running_loop()
        _, ipv4, ipv6 = wanted
        try:
            for address in (ipv4, ipv6):
                sock = _bound_socket(address, self._port, self._interface)
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
                self._transports.append(transport)
        except OSError as exc:
            self._close()
            problem = f"private DNS cannot listen on {self._interface} port {self._port}: {exc}"
            if problem != self._reported:  # retried every poll; logged once
                log.error("%s", problem)
                self._reported = problem
            return
        self._bound, self._reported = wanted, None
        log.info("private DNS on %s and [%s] port %d (interface %s)", ipv4, ipv6, self._port, self._interface)

    def _close(self) -> None:
        transports, self._transports, self._bound = self._transports, [], None
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()
