"""agent.dns.answer: one query in, one reply out (pure), as a table."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from wardgate.agent.dns import Zone, answer

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
