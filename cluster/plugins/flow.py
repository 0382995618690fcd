"""HttpFlow: the one object the proxy and the plugins share for a request (plugins see nothing else).

It lives here, below `cluster.proxy`, because both layers need it and plugins may not import the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict


@dataclass(slots=True)
class Request:
    """The request as the upstream will get it. `path` is the raw (still percent-encoded) path the
    client sent, before the route's prefix rewriting; `query` is the raw query string (no `?`)."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass(slots=True)
class Response:
    """A response: a plugin's answer, or the upstream's. `body` is None while it streams unbuffered."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes | None = b""


@dataclass(slots=True)
class HttpFlow:
    """One request through the chain.

    A request-phase hook that sets `response` answers the request: the upstream is skipped, the response
    phase and the access log still run. `ctx` is the policy context (treat as read-only). Plugin-private
    state goes in `metadata[<plugin name>]`.
    """

    service: str
    request_id: str
    request: Request
    ctx: Mapping[str, Any]
    response: Response | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
