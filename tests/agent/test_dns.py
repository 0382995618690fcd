"""agent.dns.answer: one query in, one reply out (pure), as a table; DnsServer binds as soon as it has a zone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from wardgate.agent.dns import DnsServer, Zone, answer

ZONE = Zone(name="local.example.com", services=frozenset({"llm", "my-api"}), ipv4="100.64.0.1", ipv6="fd77::1")


def ask(name: str, rdtype: str = "A") -> dns.message.Message:
    reply = answer(dns.message.make_query(name, rdtype).to_wire(), ZONE)
    assert reply is not None
    return dns.message.from_wire(reply)


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "addresses"),
    [
        ("llm.local.example.com", "A", dns.rcode.NOERROR, ["100.64.0.1"]),
        ("LLM.Local.Example.Com.", "A", dns.rcode.NOERROR, ["100.64.0.1"]),
        ("my-api.local.example.com", "AAAA", dns.rcode.NOERROR, ["fd77::1"]),
        ("llm.local.example.com", "MX", dns.rcode.NOERROR, []),
        ("local.example.com", "A", dns.rcode.NOERROR, []),
        ("nope.local.example.com", "A", dns.rcode.NXDOMAIN, []),
        ("a.llm.local.example.com", "A", dns.rcode.NXDOMAIN, []),
        ("llm.example.com", "A", dns.rcode.REFUSED, []),
        ("example.org", "A", dns.rcode.REFUSED, []),
    ],
)
def test_answers(name: str, rdtype: str, rcode: int, addresses: list[str]) -> None:
    reply = ask(name, rdtype)
    assert reply.rcode() == rcode
    assert [item.to_text() for rrset in reply.answer for item in rrset] == addresses
    if rcode != dns.rcode.REFUSED:
        assert reply.flags & dns.flags.AA
    if addresses:
        assert reply.answer[0].ttl == 5
        assert reply.answer[0].rdtype == dns.rdatatype.from_text(rdtype)


def test_garbage_and_replies_are_dropped() -> None:
    assert answer(b"\x00\x01garbage", ZONE) is None
    assert answer(b"", ZONE) is None
    query = dns.message.make_query("llm.local.example.com", "A")
    reply = dns.message.make_response(query)
    assert answer(reply.to_wire(), ZONE) is None


def test_other_opcodes_are_not_implemented() -> None:
    query = dns.message.make_query("llm.local.example.com", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = answer(query.to_wire(), ZONE)
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_server_answers_as_soon_as_it_has_a_zone() -> None:
    """A restarted agent learns its zone from its first PeerSet: DNS must answer at once, not at the next
    poll (the poll here is 60 s, so only the wake-up can make it answer within the deadline)."""
    port = _udp_port()
    server = DnsServer("lo", port, poll_interval=60)
    task = asyncio.get_running_loop().create_task(server.run())
    query = dns.message.make_query("llm.local.example.com", "A").to_wire()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.05)  # run() has looked once, found no zone, and waits
        started = time.monotonic()
        server.zone = Zone(name="local.example.com", services=frozenset({"llm"}), ipv4="127.0.0.1", ipv6="::1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            while True:
                assert time.monotonic() - started < 5, "no DNS answer after the zone was set"
                sock.sendto(query, ("127.0.0.1", port))
                try:
                    async with asyncio.timeout(0.1):
                        reply = dns.message.from_wire(await loop.sock_recv(sock, 4096))
                    break
                except (TimeoutError, ConnectionRefusedError):
                    continue
        assert [rr.address for rr in reply.answer[0]] == ["127.0.0.1"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
