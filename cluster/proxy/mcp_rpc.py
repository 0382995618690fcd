"""MCP over Streamable HTTP as the gateway reads it: JSON-RPC messages in, filtered answers out (sans-IO).

The flow:

    POST body ─▶ parse: one message or a batch ─▶ a Call per message (`ctx.request.mcp`: method, name,
    arguments) ─▶ [the gateway decides each Call] ─▶ forwarded(): the allowed messages, re-encoded only
    when some were denied ─▶ upstream ─▶ ResponseFilter: `tools/list`, `resources/list` and `prompts/list`
    results keep only what the caller may call; the denied requests' JSON-RPC errors are added, whether the
    upstream answers with JSON, an SSE stream or `202 Accepted`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

DENIED = -32001
"""The JSON-RPC error code of a call the gateway's policies refused (implementation-defined server error)."""
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
MAX_FILTERED = 32 * 1024 * 1024
"""The largest upstream answer held to filter a list result (larger: the pending calls get an error)."""

NAMED_BY = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}
"""Where a request names what it acts on (`ctx.request.mcp.name`)."""
LISTS = {
    "tools/list": ("tools", "tools/call", "name"),
    "resources/list": ("resources", "resources/read", "uri"),
    "prompts/list": ("prompts", "prompts/get", "name"),
}
"""A list method: its result key, and the call each listed item is checked as (with the item's name field)."""
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")


class Malformed(ValueError):
    """The body is not JSON-RPC: it is answered by the gateway, never forwarded."""


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC message of a request. `method` is "" for a response the client sends the server and for
    the transport's own GET (listen) and DELETE (end session)."""

    message: Any
    method: str = ""
    name: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: Any = None
    is_request: bool = False

    def ctx(self) -> dict[str, Any]:
        """`ctx.request.mcp`."""
        return {"method": self.method, "name": self.name, "arguments": self.arguments}

    def log(self) -> dict[str, Any]:
        """What the access log says of it: never its arguments."""
        return {"method": self.method or None, "name": self.name or None}


TRANSPORT = Call(None)
"""The call a GET or DELETE of the MCP endpoint is decided as."""


def _call(message: Any) -> Call:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise Malformed("not a JSON-RPC 2.0 message")
    method = message.get("method")
    if method is None:
        return Call(message)  # a response to a request of the server (sampling, elicitation, roots)
    if not isinstance(method, str):
        raise Malformed("a JSON-RPC method is a string")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    name = params.get(NAMED_BY.get(method, ""), "")
    arguments = params.get("arguments")
    return Call(
        message,
        method,
        name if isinstance(name, str) else "",
        arguments if isinstance(arguments, dict) else {},
        message.get("id"),
        "id" in message,
    )


def parse(body: bytes) -> tuple[list[Call], bool]:
    """The calls of a POST body and whether it was a batch; Malformed when it is not JSON-RPC."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed("not JSON") from exc
    if isinstance(value, list):
        if not value:
            raise Malformed("an empty batch")
        return [_call(m) for m in value], True
    return [_call(value)], False


def error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def denial(call: Call, reason: str) -> dict[str, Any]:
    """The JSON-RPC error of a refused request: what was refused and the decision's reason."""
    what = f"{call.method} {call.name}".strip()
    return error(call.id, DENIED, f"Access denied by Wardgate policy: {what} ({reason})", {"reason": reason})


def forwarded(calls: list[Call], allowed: list[Call], batch: bool, body: bytes) -> bytes:
    """The body the upstream gets: the original when nothing was taken out."""
    if len(allowed) == len(calls):
        return body
    if batch:
        return orjson.dumps([c.message for c in allowed])
    return orjson.dumps(allowed[0].message)


def _key(id_: Any) -> bytes:
    return orjson.dumps(id_)


Allowed = Callable[[list[tuple[str, str]]], Awaitable[list[bool]]]
"""Whether the caller may make each of these calls (method, name) with empty arguments: decided together, so
that the gateway can take them off the event loop when its policies run Rego."""


class ResponseFilter:
    """Rewrites the upstream's answer to a POST (exchange.BodyFilter): list results filtered per caller, the
    denied requests' errors added. JSON is held whole; an SSE stream is rewritten event by event."""

    def __init__(self, lists: dict[bytes, str], denied: list[dict[str, Any]], batch: bool, allowed: Allowed) -> None:
        self._lists = lists
        self._denied = denied
        self._batch = batch
        self._allowed = allowed
        self._seen: dict[tuple[str, str], bool] = {}
        self._mode = "raw"
        self._buffer = bytearray()
        self._overflow = False

    @classmethod
    def of(cls, allowed_calls: list[Call], denied: list[dict[str, Any]], batch: bool, may: Allowed) -> ResponseFilter:
        lists = {_key(c.id): c.method for c in allowed_calls if c.is_request and c.method in LISTS}
        return cls(lists, denied, batch, may)

    @property
    def needed(self) -> bool:
        return bool(self._lists or self._denied)

    def head(self, status: int, content_type: str) -> tuple[int, str | None]:
        """The status and Content-Type the client gets (None: unchanged)."""
        if status == 202 and self._denied:
            self._mode = "accepted"
            return 200, "application/json"
        if status >= 300:
            return status, None
        self._mode = "sse" if "text/event-stream" in content_type.lower() else "json"
        return status, None

    async def feed(self, chunk: bytes) -> bytes:
        if self._mode == "raw":
            return chunk
        if self._mode == "accepted" or self._overflow:
            return b""
        self._buffer += chunk
        if len(self._buffer) > MAX_FILTERED:
            self._overflow = True
            self._buffer.clear()
            return b""
        if self._mode == "json":
            return b""
        out = bytearray()
        while match := _EVENT_END.search(self._buffer):
            event, end = bytes(self._buffer[: match.start()]), match.group()
            del self._buffer[: match.end()]  # after reading the match: it reads the buffer it was found in
            out += await self._event(event, end)
        return bytes(out)

    async def flush(self) -> bytes:
        if self._mode == "raw":
            return b""
        if self._overflow:
            return self._overflowed()
        if self._mode == "accepted":
            return orjson.dumps(self._denied if self._batch else self._denied[0])
        if self._mode == "json":
            return await self._json(bytes(self._buffer))
        out = bytearray(await self._event(bytes(self._buffer), b"\n\n")) if self._buffer.strip() else bytearray()
        for err in self._denied:
            out += b"event: message\ndata: " + orjson.dumps(err) + b"\n\n"
        return bytes(out)

    def _overflowed(self) -> bytes:
        errors = [error(orjson.loads(k), -32603, "answer too large for the gateway to filter") for k in self._lists]
        errors += self._denied
        if self._mode == "sse":
            return b"".join(b"event: message\ndata: " + orjson.dumps(e) + b"\n\n" for e in errors)
        return orjson.dumps(errors if self._batch or len(errors) > 1 else errors[0])

    async def _json(self, data: bytes) -> bytes:
        try:
            value = orjson.loads(data) if data.strip() else None
        except orjson.JSONDecodeError:
            return data
        if isinstance(value, list):
            value = [await self._message(m) for m in value] + self._denied
        elif isinstance(value, dict):
            value = await self._message(value)
            if self._denied:
                value = [value, *self._denied]
        elif value is None and self._denied:
            value = self._denied if self._batch else self._denied[0]
        else:
            return data
        return orjson.dumps(value)

    async def _event(self, event: bytes, end: bytes) -> bytes:
        lines = _LINE.split(event)
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event + end
        try:
            message = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            return event + end
        filtered = await self._message(message)
        if filtered is message:
            return event + end
        newline = end[: len(end) // 2]
        kept = [line for line in lines if not line.startswith(b"data:")]
        return newline.join([*kept, b"data: " + orjson.dumps(filtered)]) + end

    async def _message(self, message: Any) -> Any:
        """A list result with only the items the caller may call; any other message as it is."""
        if not isinstance(message, dict) or "result" not in message:
            return message
        method = self._lists.get(_key(message.get("id")))
        result = message["result"]
        if method is None or not isinstance(result, dict):
            return message
        key, call, field_ = LISTS[method]
        items = result.get(key)
        if not isinstance(items, list):
            return message
        named = [(i, i.get(field_)) for i in items if isinstance(i, dict)]
        asked = list(dict.fromkeys((call, n) for _, n in named if isinstance(n, str) and (call, n) not in self._seen))
        if asked:
            self._seen.update(zip(asked, await self._allowed(asked), strict=True))
        kept = [i for i, n in named if isinstance(n, str) and self._seen[(call, n)]]
        return {**message, "result": {**result, key: kept}}
