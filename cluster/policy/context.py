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


MAX_VALUES = 10_000
"""The default cap on JSON values (objects, arrays, scalars) parsed into `bodyMap`."""


class TooManyValues(ValueError):
    """The body holds more JSON values than may be parsed for policies and plugins."""


def parse_body_map(body: bytes, content_type: str, max_values: int = MAX_VALUES) -> dict[str, Any]:
    """The JSON object in `body`, or {} when it is not a JSON object (arrays, scalars, invalid, non-UTF-8, nested
    deeper than MAX_JSON_DEPTH). TooManyValues when it holds more than `max_values` values: converting those
    for CEL, Rego and Lua is what would cost a request tens of milliseconds of the node's event loop."""
    if not body or (content_type and "json" not in content_type and body.lstrip()[:1] != b"{"):
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return value if _within(value, max_values) else {}


def _within(root: dict[str, Any], max_values: int) -> bool:
    """False when nested deeper than MAX_JSON_DEPTH; TooManyValues past `max_values`. Iterative, and it stops
    at the cap, so its cost is bounded by the cap whatever the body."""
    stack: list[tuple[object, int]] = [(root, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise TooManyValues(f"more than {max_values} JSON values")
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


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
