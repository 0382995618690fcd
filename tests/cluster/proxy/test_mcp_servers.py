"""The answer of one MCP server of a multi-server Service, found in its JSON body or its SSE stream."""

from __future__ import annotations

import orjson
import pytest

from wardgate.cluster.proxy.mcp_servers import ServerFailed, answer_of

ANSWER = {"jsonrpc": "2.0", "id": 7, "result": {"tools": []}}
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
SAMPLING = {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}}


def _sse(*messages: object, newline: bytes = b"\n") -> bytes:
    return b"".join(b"event: message" + newline + b"data: " + orjson.dumps(m) + newline + newline for m in messages)


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (orjson.dumps(ANSWER), "application/json"),
        (_sse(ANSWER), "text/event-stream"),
        (_sse(PROGRESS, SAMPLING, ANSWER), "text/event-stream"),
        (_sse(PROGRESS, ANSWER, newline=b"\r\n"), "text/event-stream; charset=utf-8"),
        (b": keep-alive\n\n" + _sse(ANSWER), "text/event-stream"),
    ],
)
def test_the_answer_with_the_id_is_found(raw: bytes, content_type: str) -> None:
    assert answer_of(raw, content_type, 7) == ANSWER


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (_sse(PROGRESS, {**ANSWER, "id": 8}), "text/event-stream", "no answer in the event stream"),
        (b"<html>", "application/json", "not JSON"),
        (orjson.dumps({"jsonrpc": "2.0", "id": 7}), "application/json", "not a JSON-RPC response"),
        (orjson.dumps([ANSWER]), "application/json", "not a JSON-RPC response"),
    ],
)
def test_no_answer_is_a_failed_server(raw: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(ServerFailed, match=reason):
        answer_of(raw, content_type, 7)
