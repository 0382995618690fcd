"""JSON request bodies of the admin API, parsed so that no body can crash or stall the parser: orjson (nesting
over 1024 is its error, not a RecursionError), and a bounded depth check after it."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from wardgate.cluster.errors import Invalid

MAX_JSON_DEPTH = 64
"""Deeper than any manifest: a deeper body is refused before validation walks it (recursively)."""


def _depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit`; iterative, so no depth can exhaust the stack here."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


async def json_body(request: web.Request) -> Any:
    """The JSON body. orjson refuses nesting over 1024 (json.loads would recurse until RecursionError: a 500);
    past MAX_JSON_DEPTH the body is refused as well."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Invalid("the request body is not JSON, or it nests too deeply") from None
    if _depth_over(body, MAX_JSON_DEPTH):
        raise Invalid(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body
