"""What the access log wants from OpenAI-style bodies: the requested model and the reported token usage."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

TAIL_BYTES = 16 * 1024
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]{1,40})"')
JSON_CAPTURE_LIMIT = 2 * 1024 * 1024


def request_model(body_map: Mapping[str, Any]) -> str | None:
    model = body_map.get("model")
    return model if isinstance(model, str) else None


def _usage_of(value: object) -> dict[str, Any] | None:
    if isinstance(value, dict):
        usage = value.get("usage")
        if isinstance(usage, dict):
            return {k: v for k, v in usage.items() if isinstance(v, int | float)}
    return None


def usage_from_json(body: bytes) -> dict[str, Any] | None:
    try:
        return _usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def usage_from_sse_tail(tail: bytes) -> dict[str, Any] | None:
    """The last `usage` object among the `data:` events of a stream's tail (OpenAI sends it last)."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            found = _usage_of(orjson.loads(line[5:].strip()))
        except orjson.JSONDecodeError:
            continue
        if found:
            return found
    return None


class ResponseTap:
    """Watches relayed bytes without holding a stream: a bounded JSON copy or the last bytes of an SSE stream."""

    __slots__ = ("_buffer", "_mode")

    def __init__(self, content_type: str) -> None:
        if "text/event-stream" in content_type:
            self._mode = "sse"
        elif "json" in content_type:
            self._mode = "json"
        else:
            self._mode = ""
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._mode == "sse":
            self._buffer += chunk
            if len(self._buffer) > 2 * TAIL_BYTES:
                del self._buffer[:-TAIL_BYTES]
        elif self._mode == "json":
            if len(self._buffer) + len(chunk) <= JSON_CAPTURE_LIMIT:
                self._buffer += chunk
            else:
                self._mode = ""
                self._buffer.clear()

    def finish_reasons(self) -> list[str] | None:
        """`finish_reason` of each choice (JSON), or every non-null one seen in the stream's tail (SSE)."""
        if self._mode == "json":
            try:
                value = orjson.loads(bytes(self._buffer))
            except orjson.JSONDecodeError:
                return None
            choices = value.get("choices") if isinstance(value, dict) else None
            found = [c.get("finish_reason") for c in choices or () if isinstance(c, dict)]
        elif self._mode == "sse":
            found = [m.decode() for m in _FINISH.findall(bytes(self._buffer))]
        else:
            return None
        reasons = [r for r in found if isinstance(r, str)]
        return reasons or None

    def usage(self) -> dict[str, Any] | None:
        if self._mode == "sse":
            return usage_from_sse_tail(bytes(self._buffer))
        if self._mode == "json":
            return usage_from_json(bytes(self._buffer))
        return None
