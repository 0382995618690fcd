"""The MCP core without sockets: parsing calls, what is forwarded, and the answer filter on JSON, SSE (split at
any byte) and 202 answers, with batches, notifications and denied requests."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from wardgate.cluster.proxy.mcp_rpc import DENIED, Call, Malformed, ResponseFilter, denial, forwarded, parse

TOOLS = [{"name": "search_docs"}, {"name": "delete_doc"}, {"name": "whoami"}]


ASKED: list[list[tuple[str, str]]] = []


async def _may(calls: list[tuple[str, str]]) -> list[bool]:
    ASKED.append(calls)
    return [method == "tools/call" and name.startswith("search_") for method, name in calls]


def _req(id_: int | str, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def _filter(calls: list[Call], denied: list[dict[str, Any]] | None = None, batch: bool = False) -> ResponseFilter:
    return ResponseFilter.of(calls, denied or [], batch, _may)


def test_calls_name_what_they_act_on() -> None:
    (call,), batch = parse(orjson.dumps(_req(1, "tools/call", name="search_docs", arguments={"q": "x"})))
    assert not batch and call.is_request
    assert call.ctx() == {"method": "tools/call", "name": "search_docs", "arguments": {"q": "x"}}
    assert "arguments" not in call.log()
    (read,), _ = parse(orjson.dumps(_req(2, "resources/read", uri="docs://readme")))
    assert read.name == "docs://readme"
    calls, batch = parse(orjson.dumps([_req(3, "tools/list"), {"jsonrpc": "2.0", "method": "notifications/x"}]))
    assert batch and [c.is_request for c in calls] == [True, False]
    (answer,), _ = parse(b'{"jsonrpc": "2.0", "id": 9, "result": {}}')
    assert answer.method == "" and not answer.is_request


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"id": 1, "method": "ping"}', b'{"jsonrpc": "2.0", "method": 1}']
)
def test_what_is_not_json_rpc_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        parse(body)


def test_denied_messages_are_taken_out_of_what_is_forwarded() -> None:
    body = orjson.dumps([_req(1, "tools/call", name="delete_doc"), _req(2, "tools/list")])
    calls, _ = parse(body)
    assert forwarded(calls, calls, True, body) is body
    assert orjson.loads(forwarded(calls, calls[1:], True, body)) == [_req(2, "tools/list")]
    error = denial(calls[0], "no-rule-matched")
    assert error["id"] == 1 and error["error"]["code"] == DENIED and "delete_doc" in error["error"]["message"]


async def test_json_list_answer_is_filtered() -> None:
    calls, _ = parse(orjson.dumps(_req(7, "tools/list")))
    rewrite = _filter(calls)
    assert rewrite.needed and rewrite.head(200, "application/json") == (200, None)
    answer = orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"tools": TOOLS, "nextCursor": "c"}})
    out = await rewrite.feed(answer[:10]) + await rewrite.feed(answer[10:]) + await rewrite.flush()
    assert orjson.loads(out)["result"] == {"tools": [{"name": "search_docs"}], "nextCursor": "c"}
    asked = [("tools/call", "search_docs"), ("tools/call", "delete_doc"), ("tools/call", "whoami")]
    assert ASKED[-1] == asked  # one batch of decisions per answer (taken off the loop together when Rego runs)


def test_other_answers_are_not_rewritten() -> None:
    calls, _ = parse(orjson.dumps(_req(1, "tools/call", name="search_docs")))
    assert not _filter(calls).needed


async def test_sse_list_answer_is_filtered_wherever_the_stream_is_split() -> None:
    calls, _ = parse(orjson.dumps(_req("a", "tools/list")))
    progress = b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n'
    listed = orjson.dumps({"jsonrpc": "2.0", "id": "a", "result": {"tools": TOOLS}})
    stream = progress + b"event: message\r\nid: 5\r\ndata: " + listed + b"\r\n\r\n"
    for cut in range(1, len(stream)):
        rewrite = _filter(calls)
        rewrite.head(200, "text/event-stream")
        out = await rewrite.feed(stream[:cut]) + await rewrite.feed(stream[cut:]) + await rewrite.flush()
        assert out.startswith(progress)
        events = out[len(progress) :].split(b"\r\n")
        assert events[:2] == [b"event: message", b"id: 5"]
        assert orjson.loads(events[2].removeprefix(b"data: "))["result"]["tools"] == [{"name": "search_docs"}]


async def test_denied_requests_of_a_batch_are_answered_beside_the_upstreams_answer() -> None:
    calls, _ = parse(orjson.dumps([_req(1, "tools/call", name="delete_doc"), _req(2, "tools/list")]))
    denied = [denial(calls[0], "rule-match")]
    json_answer = orjson.dumps([{"jsonrpc": "2.0", "id": 2, "result": {"tools": TOOLS}}])
    rewrite = _filter(calls[1:], denied, batch=True)
    rewrite.head(200, "application/json")
    out = orjson.loads(await rewrite.feed(json_answer) + await rewrite.flush())
    assert [m["id"] for m in out] == [2, 1] and out[0]["result"]["tools"] == [{"name": "search_docs"}]
    rewrite = _filter(calls[1:], denied, batch=True)
    rewrite.head(200, "text/event-stream")
    out_sse = await rewrite.feed(b"data: " + json_answer[1:-1] + b"\n\n") + await rewrite.flush()
    events = [orjson.loads(e.split(b"data: ")[1]) for e in out_sse.split(b"\n\n") if e]
    assert [e["id"] for e in events] == [2, 1] and events[1]["error"]["code"] == DENIED


async def test_accepted_notifications_with_denied_requests_become_an_answer() -> None:
    calls, _ = parse(orjson.dumps([_req(1, "tools/call", name="delete_doc"), {"jsonrpc": "2.0", "method": "n"}]))
    rewrite = _filter(calls[1:], [denial(calls[0], "rule-match")], batch=True)
    assert rewrite.head(202, "") == (200, "application/json")
    out = orjson.loads(await rewrite.feed(b"") + await rewrite.flush())
    assert [m["id"] for m in out] == [1]


async def test_an_http_error_passes_untouched() -> None:
    calls, _ = parse(orjson.dumps(_req(1, "tools/list")))
    rewrite = _filter(calls)
    assert rewrite.head(404, "application/json") == (404, None)
    assert await rewrite.feed(b"not found") == b"not found" and await rewrite.flush() == b""
