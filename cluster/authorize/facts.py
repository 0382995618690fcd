"""Request facts: what a request says about itself, and the one place the policy context `ctx` is built.

The gateway, the tunnel listener, the admin API and `wardgatectl policy eval` all describe a request as
`RequestFacts` (from a yarl URL, so a query string is read the same way everywhere) and hand it to
`admit`; `policy_context` turns facts + identity into `ctx`. Credentials never reach policies: the
`authorization` header is dropped and the session cookie is cut out of `cookie` (by the function that cuts
it out of what upstreams get).

The path is normalised once, here (`normalize_path`): the gateway forwards `RequestFacts.raw_path`, so the
path a rule judged is the path the upstream receives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from yarl import URL

from wardgate.cluster.errors import Invalid
from wardgate.cluster.identity.authenticate import Identity, without_session_cookie
from wardgate.cluster.policy.context import build_ctx
from wardgate.cluster.usage.meter import EMPTY_USAGE

HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization"})
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SEPARATORS = ("%2F", "%5C", "%00", "\\")
"""Encoded `/` and `\\` (a segment boundary for some upstreams and not for others) and NUL: refused."""
_NORMAL = re.compile(r"(?:/(?!\.\.?(?:/|$))[^/%\\]+)*/?")
"""A path already in normal form (no escape, no empty, `.` or `..` segment, no `\\`): returned as it is."""


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalize_path(raw_path: str) -> str | None:
    """The request path as rules see it and the upstream gets it (RFC 3986 §6.2.2, plus merged slashes):
    percent-encoded unreserved characters decoded (`%61` is `a`, `%2e` is `.`), other escapes kept with
    upper-case hex, runs of `/` merged, `.` and `..` segments resolved (never above the root). None when
    the path is not absolute or holds an encoded `/` or `\\`, a `\\` or an encoded NUL."""
    if not raw_path.startswith("/"):
        return None
    if _NORMAL.fullmatch(raw_path):
        return raw_path
    return _normalize(raw_path)


def _normalize(raw_path: str) -> str | None:
    if not raw_path.startswith("/"):
        return None
    decoded = _PERCENT.sub(_decode_unreserved, raw_path)
    if any(s in decoded for s in _SEPARATORS):
        return None
    out: list[str] = []
    segments = decoded.split("/")[1:]
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One request as the decision sees it. `headers` keep the client's spelling; `query` is decoded;
    `raw_path` is the normalised path, still percent-encoded (what the upstream gets), `path` the same
    path decoded (what `ctx.request.http.path` is)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    host: str
    scheme: str
    ip: str
    body: bytes = b""
    raw_path: str = "/"

    @classmethod
    def of(
        cls,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        *,
        host: str,
        scheme: str,
        ip: str,
        body: bytes = b"",
    ) -> RequestFacts:
        """Raises Invalid when the path is refused (see `normalize_path`)."""
        raw_path = normalize_path(url.raw_path)
        if raw_path is None:
            raise Invalid("the request path holds an encoded '/' or '\\', a '\\' or an encoded NUL")
        path = URL.build(path=raw_path, encoded=True).path
        return cls(method.upper(), path, dict(url.query), headers, host, scheme, ip, body, raw_path)

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return ""


def policy_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`ctx.request.http.headers`: lower-case names, no credentials."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in HIDDEN_HEADERS:
            continue
        if lower == "cookie":
            value = without_session_cookie(value)
            if not value:
                continue
        out[lower] = value
    return out


def session_doc(identity: Identity | None) -> dict[str, Any]:
    """`ctx.session` (ACCESS_TOKEN credentials have no Session: an empty name)."""
    if identity is None or identity.session is None:
        return {"metadata": {"name": ""}, "spec": {"type": "CLIENTLESS"}}
    return {"metadata": {"name": identity.session.metadata.name}, "spec": {"type": identity.session.spec.type.value}}


def policy_context(
    user: Mapping[str, Any],
    session: Mapping[str, Any],
    service: Mapping[str, Any],
    facts: RequestFacts,
    body_map: Mapping[str, Any],
    usage: Mapping[str, Any] | None = None,
    mcp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`ctx`; `usage` is the caller's current quota counters (`ctx.usage`, cluster/usage/meter.py); `mcp` is
    `ctx.request.mcp` (method, name, arguments) of one JSON-RPC call to an MCP Service."""
    ctx = build_ctx(
        user=user,
        session=session,
        service=service,
        method=facts.method,
        path=facts.path,
        query=facts.query,
        headers=policy_headers(facts.headers),
        host=facts.host,
        scheme=facts.scheme,
        body=facts.body,
        body_map=body_map,
        ip=facts.ip,
        time=datetime.now(UTC).isoformat(),
    )
    ctx["usage"] = usage if usage is not None else EMPTY_USAGE
    if mcp is not None:
        ctx["request"]["mcp"] = mcp
    return ctx
