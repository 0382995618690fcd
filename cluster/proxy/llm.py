"""What the gateway reads in LLM bodies: the requested model, and the answer's token usage (any format:
cluster/usage/extract.py) and generated text (for an estimate when no usage comes), without holding a stream.

When the gateway asked the provider for stream usage on the client's behalf (`stream_options.include_usage`,
for a budget), the tap also takes the usage-only chunk out of what the client sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from wardgate.cluster.usage.extract import Usage, merge, produced_text, usage_of

TAIL_BYTES = 16 * 1024
HEAD_BYTES = 8 * 1024
"""Anthropic reports a stream's input tokens in its first event (`message_start`): the head is kept too."""
TEXT_LIMIT = 1024 * 1024
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]{1,40})"')
JSON_CAPTURE_LIMIT = 2 * 1024 * 1024
_UNREAD = object()
_GEMINI_MODEL = re.compile(r"/models/([^/:]{1,200}):(?:generateContent|streamGenerateContent)$")


def request_model(body_map: Mapping[str, Any], path: str = "") -> str | None:
    """`model` of the body, or the model in a Gemini path (`/v1beta/models/<model>:generateContent`)."""
    model = body_map.get("model")
    if isinstance(model, str):
        return model
    found = _GEMINI_MODEL.search(path) if path else None
    return found.group(1) if found else None


_USAGE_OBJECT = re.compile(rb'"usage(?:Metadata)?"\s*:\s*\{')
"""Where an event reports usage (what usage_of reads: `usage` or `usageMetadata`, an object). OpenAI streams
with include_usage carry `"usage":null` in every chunk: those lines are never parsed."""


def _sse_usage(data: bytes) -> Usage | None:
    found: Usage | None = None
    at = 0
    while (hit := _USAGE_OBJECT.search(data, at)) is not None:
        start = data.rfind(b"\n", 0, hit.start()) + 1
        end = data.find(b"\n", hit.end())
        end = len(data) if end < 0 else end
        at = end + 1
        line = data[start:end].strip()
        if not line.startswith(b"data:"):
            continue
        try:
            found = merge(found, usage_of(orjson.loads(line[5:].strip())))
        except orjson.JSONDecodeError:
            continue
    return found


def _usage_only_event(event: bytes) -> bool:
    """An OpenAI stream's usage chunk: `choices` empty and `usage` set."""
    if b'"usage"' not in event:
        return False
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                return False
            return isinstance(value, dict) and value.get("choices") == [] and isinstance(value.get("usage"), dict)
    return False


class ResponseTap:
    """Watches relayed bytes: a bounded JSON copy, or the head and tail of an SSE stream and its text."""

    __slots__ = ("_buffer", "_head", "_mode", "_parsed", "_pending", "_reported", "_strip", "_text")

    def __init__(self, content_type: str, strip_usage: bool = False) -> None:
        if "text/event-stream" in content_type:
            self._mode = "sse"
        elif "json" in content_type:
            self._mode = "json"
        else:
            self._mode = ""
        self._buffer = bytearray()
        self._head = bytearray()
        self._text = bytearray()
        self._pending = bytearray()
        self._strip = strip_usage and self._mode == "sse"
        self._parsed: object = _UNREAD
        """The JSON answer, parsed once for usage and finish reasons (None: not JSON)."""
        self._reported: object = _UNREAD
        """reported(), kept until the next chunk: the access record and the settlement both read it."""

    def feed(self, chunk: bytes) -> bytes:
        """Take in a relayed chunk; returns what the client gets (the chunk, unless a usage chunk is stripped)."""
        self._parsed = self._reported = _UNREAD
        if self._mode == "sse":
            if len(self._head) < HEAD_BYTES:
                self._head += chunk[: HEAD_BYTES - len(self._head)]
            self._buffer += chunk
            if len(self._buffer) > 2 * TAIL_BYTES:
                self._count_text(bytes(self._buffer[:-TAIL_BYTES]))
                del self._buffer[:-TAIL_BYTES]
            return self._without_usage(chunk) if self._strip else chunk
        if self._mode == "json":
            if len(self._buffer) + len(chunk) <= JSON_CAPTURE_LIMIT:
                self._buffer += chunk
            else:
                self._mode = ""
                self._buffer.clear()
        return chunk

    def flush(self) -> bytes:
        """What a stripping tap still holds (an unfinished last event) at the end of the stream."""
        rest, self._pending = bytes(self._pending), bytearray()
        return b"" if self._strip and _usage_only_event(rest) else rest

    def _without_usage(self, chunk: bytes) -> bytes:
        self._pending += chunk
        data = bytes(self._pending)
        cut = data.rfind(b"\n\n")
        if cut < 0:
            return b""
        complete, self._pending = data[: cut + 2], bytearray(data[cut + 2 :])
        if b'"usage"' not in complete:
            return complete
        events = complete.split(b"\n\n")
        return b"\n\n".join(e for e in events if not _usage_only_event(e))

    def _count_text(self, data: bytes) -> None:
        if len(self._text) < TEXT_LIMIT:
            self._text += produced_text(data)[: TEXT_LIMIT - len(self._text)]

    def produced(self) -> bytes:
        """The generated text seen so far (what an estimate counts)."""
        if self._mode == "sse":
            return bytes(self._text) + produced_text(bytes(self._buffer))
        if self._mode == "json":
            return produced_text(bytes(self._buffer))
        return b""

    def finish_reasons(self) -> list[str] | None:
        """`finish_reason` of each choice (JSON), or every non-null one seen in the stream's tail (SSE)."""
        if self._mode == "json":
            value = self._json()
            choices = value.get("choices") if isinstance(value, dict) else None
            found = [c.get("finish_reason") for c in choices or () if isinstance(c, dict)]
        elif self._mode == "sse":
            found = [m.decode() for m in _FINISH.findall(bytes(self._buffer))]
        else:
            return None
        reasons = [r for r in found if isinstance(r, str)]
        return reasons or None

    def _json(self) -> object:
        if self._parsed is _UNREAD:
            try:
                self._parsed = orjson.loads(self._buffer)
            except orjson.JSONDecodeError:
                self._parsed = None
        return self._parsed

    def reported(self) -> Usage | None:
        """The usage the provider reported, in any format; None when it reported none (yet)."""
        if self._reported is _UNREAD:
            if self._mode == "sse":
                self._reported = merge(_sse_usage(bytes(self._head)), _sse_usage(bytes(self._buffer)))
            else:
                self._reported = usage_of(self._json()) if self._mode == "json" else None
        return self._reported  # type: ignore[return-value]

    def usage(self) -> dict[str, Any] | None:
        found = self.reported()
        return found.as_record() if found is not None else None
