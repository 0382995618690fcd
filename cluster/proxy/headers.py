"""Header hygiene for both directions: hop-by-hop (RFC 9110 §7.6.1), identity spoofing, forwarding."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Removed in both directions, together with every header the Connection header names."""

CLIENT_IDENTITY = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "forwarded",
        "x-real-ip",
        "x-user",
        "x-remote-user",
        "remote-user",
        "x-email",
        "x-request-id",
        "authorization",
        "host",
        "content-length",
    }
)
"""Client-sent headers the gateway never passes on: identity claims it cannot trust, and its own."""

IDENTITY_PREFIXES = ("x-wardgate-", "x-auth-request-", "x-octelium-")


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], remove: Iterable[str], cookie_to_strip: str
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, identity and removed ones, and minus our session cookie."""
    dropped = HOP_BY_HOP | _connection_named(incoming) | set(remove)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in dropped or lower in CLIENT_IDENTITY or lower.startswith(IDENTITY_PREFIXES):
            continue
        if lower == "cookie":
            kept = "; ".join(
                part.strip() for part in value.split(";") if not part.strip().startswith(cookie_to_strip + "=")
            )
            if kept:
                out.add(name, kept)
            continue
        out.add(name, value)
    return out


def client_response_headers(upstream: CIMultiDictProxy[str], remove: Iterable[str]) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP | _connection_named(upstream) | set(remove)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in dropped or lower == "content-length":
            continue
        out.add(name, value)
    return out
