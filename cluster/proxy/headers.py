"""Header hygiene for both directions: hop-by-hop (RFC 9110 §7.6.1), identity spoofing, forwarding, cookies.

Names are compared lower-case with `_` read as `-`: nginx (with `underscores_in_headers`), CGI, WSGI and PHP
turn `X_Forwarded_For` into the same variable as `X-Forwarded-For`, so a spelling with underscores is the
header it imitates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from wardgate.cluster.identity.authenticate import SESSION_COOKIE, without_session_cookie
from wardgate.cluster.resources.service import identity_header

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
"""Client-sent headers the gateway never passes on, whatever a Service says: identity claims it cannot trust,
and its own. The wider list of identity headers (resources.service.IDENTITY_HEADERS) is stripped too, unless
a Service lets a named one through."""

IDENTITY_PREFIXES = ("x-wardgate-", "x-auth-request-", "x-octelium-")


def _fold(name: str) -> str:
    return name.lower().replace("_", "-")


def _connection_named(headers: Mapping[str, str] | CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for name, value in headers.items():
        if _fold(name) == "connection":
            named.update(_fold(token.strip()) for token in value.split(",") if token.strip())
    return named


def upstream_request_headers(
    incoming: Mapping[str, str], remove: Iterable[str], passed: Iterable[str] = ()
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, identity and removed ones, and minus the session cookie.

    `passed` names identity headers the Service lets through (`http.header.passIdentityHeaders`); only the
    spelling with `-` passes, so a client cannot send the same header twice under two names."""
    dropped = HOP_BY_HOP | _connection_named(incoming) | {_fold(n) for n in remove}
    let_through = {n.lower() for n in passed}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        folded = _fold(name)
        if folded in dropped or folded in CLIENT_IDENTITY or folded.startswith(IDENTITY_PREFIXES):
            continue
        if identity_header(folded) and name.lower() not in let_through:
            continue
        if folded == "cookie":
            if kept := without_session_cookie(value):
                out.add(name, kept)
            continue
        out.add(name, value)
    return out


def _tossed(set_cookie: str) -> bool:
    """Whether an upstream's Set-Cookie reaches beyond its own host, or names the session cookie.

    A Domain attribute, whatever its value, is never needed behind the gateway: the upstream's own host is
    `<service>.<domain>`, where a host-only cookie does the same, and any other value is either refused by
    the browser or a parent domain, where the cookie would reach every Service and could replace the
    session cookie (session fixation, cookie tossing)."""
    pair, *attributes = set_cookie.split(";")
    name = pair.partition("=")[0].strip().lower()
    if SESSION_COOKIE in name:
        return True
    return any(attribute.partition("=")[0].strip().lower() == "domain" for attribute in attributes)


def client_response_headers(upstream: Mapping[str, str], remove: Iterable[str]) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop and removed ones, and minus cookies it may not set."""
    dropped = HOP_BY_HOP | _connection_named(upstream) | {_fold(n) for n in remove}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        folded = _fold(name)
        if folded in dropped or folded in ("content-length", "set-cookie2"):
            continue
        if folded == "set-cookie" and (name.lower() != "set-cookie" or _tossed(value)):
            continue
        out.add(name, value)
    return out
