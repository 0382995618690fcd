"""The policy context `ctx`: built once per request from cached resources, the same for CEL and OPA.

Shape (DESIGN.md): ctx.user, ctx.session, ctx.service, ctx.request.http.{method, path, query, headers,
host, scheme, bodyMap, body}, ctx.request.ip, ctx.time. Resource parts are JSON dicts prepared when the
gateway state is built, so a request only assembles references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

BODY_CAP = 64 * 1024
MAX_JSON_DEPTH = 64


def parse_body_map(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON object in `body`, or {} when it is not a JSON object (arrays, scalars, invalid, non-UTF-8)."""
    if not body or (content_type and "json" not in content_type and body.lstrip()[:1] != b"{"):
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict) or _too_deep(value, 0):
        return {}
    return value


def _too_deep(value: object, depth: int) -> bool:
    if depth > MAX_JSON_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_too_deep(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_too_deep(v, depth + 1) for v in value)
    return False


def resource_doc(resource: Any) -> dict[str, Any]:
    """A resource as policies see it: metadata and spec, camelCase, no status."""
    doc: dict[str, Any] = resource.model_dump(mode="json", exclude={"status"}, exclude_none=True)
    doc.pop("apiVersion", None)
    return doc


def build_ctx(
    *,
    user: Mapping[str, Any],
    session: Mapping[str, Any],
    service: Mapping[str, Any],
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    host: str,
    scheme: str,
    body: bytes,
    body_map: Mapping[str, Any],
    ip: str,
    time: str,
) -> dict[str, Any]:
    return {
        "user": user,
        "session": session,
        "service": service,
        "request": {
            "http": {
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "host": host,
                "scheme": scheme,
                "bodyMap": body_map,
                "body": body[:BODY_CAP],
            },
            "ip": ip,
        },
        "time": time,
    }
