"""Request facts: what a request says about itself, and the one place the policy context `ctx` is built.

The gateway, the tunnel listener, the admin API and `wardgatectl policy eval` all describe a request as
`RequestFacts` (from a yarl URL, so a query string is read the same way everywhere) and hand it to
`admit`; `policy_context` turns facts + identity into `ctx`. Credentials never reach policies: the
`authorization` header is dropped and the session cookie is cut out of `cookie`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from yarl import URL

from cluster.identity.authenticate import SESSION_COOKIE, Identity
from cluster.policy.context import build_ctx

HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One request as the decision sees it. `headers` keep the client's spelling; `query` is decoded."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    host: str
    scheme: str
    ip: str
    body: bytes = b""

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
        return cls(method.upper(), url.path, dict(url.query), headers, host, scheme, ip, body)

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return ""


def _cut_session_cookie(value: str) -> str:
    kept = [part for part in value.split(";") if part.strip().partition("=")[0].strip() != SESSION_COOKIE]
    return ";".join(kept).strip()


def policy_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`ctx.request.http.headers`: lower-case names, no credentials."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in HIDDEN_HEADERS:
            continue
        if lower == "cookie":
            value = _cut_session_cookie(value)
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
) -> dict[str, Any]:
    return build_ctx(
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
