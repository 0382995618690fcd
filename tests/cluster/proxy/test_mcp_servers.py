"""Multi-server MCP Services: the answer of one server, found in its JSON body or its SSE stream; the gateway's
session id, sealed, opening on any worker."""

from __future__ import annotations

import os
from typing import cast

import aiohttp
import orjson
import pytest

from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.proxy.mcp_servers import Joint, McpServers, ServerFailed, answer_of

KEY = os.urandom(32)

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


def _servers(capacity: int = 100) -> McpServers:
    # The aiohttp session is never used by _seal/_open (no server is spoken to).
    return McpServers(cast(aiohttp.ClientSession, None), SealedValues(KEY, "mcp session"), capacity)


def test_a_session_id_opens_on_another_worker_with_its_user_and_server_sessions() -> None:
    sid = _servers()._seal("tools", Joint("alice", {"gh": "gh-session", "fs": None}))
    joint, why = _servers()._open("tools", sid)
    assert joint is not None and why == ""
    assert (joint.user, joint.sessions, joint.uris) == ("alice", {"gh": "gh-session", "fs": None}, {})
    assert "gh-session" not in sid and "alice" not in sid


def test_a_session_id_of_another_service_or_altered_does_not_open() -> None:
    servers = _servers()
    sid = servers._seal("tools", Joint("alice", {"gh": "gh-session"}))
    assert servers._open("other", sid)[0] is None
    altered = sid[:-2] + ("A" if sid[-2] != "A" else "B") + sid[-1]
    joint, why = servers._open("tools", altered)
    assert joint is None and "forged" in why
    assert servers._open("tools", "a-guessed-session-id")[0] is None


def test_resource_owners_are_remembered_per_process_within_a_bound() -> None:
    servers = _servers(capacity=2)
    first = servers._seal("tools", Joint("alice", {"gh": "1"}, {"file:///a": "fs"}))
    assert servers._open("tools", first)[0] == Joint("alice", {"gh": "1"}, {"file:///a": "fs"})
    servers._seal("tools", Joint("alice", {"gh": "2"}))
    servers._seal("tools", Joint("alice", {"gh": "3"}))
    forgotten = servers._open("tools", first)[0]
    assert forgotten is not None and forgotten.uris == {}  # still a session: the owners are asked again
