"""`policy eval` for MCP Services: the `mcp` field of the request, and the JSON-RPC call it stands for."""

from __future__ import annotations

from typing import Any

import pytest

from wardgate.cluster.api.policy_eval import mcp_call, mcp_message
from wardgate.cluster.errors import Invalid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "x"}, "method a non-empty string"),
        ({"method": ""}, "method a non-empty string"),
        ("tools/call", "method a non-empty string"),
        ({"method": "tools/call", "name": 3}, "mcp.name must be a string"),
        ({"method": "tools/call", "arguments": []}, "mcp.arguments must be a JSON object"),
        ({"method": "tools/call", "args": {}}, "unknown fields: args"),
    ],
)
def test_a_malformed_call_is_refused_naming_the_field(value: Any, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        mcp_call(value)


@pytest.mark.parametrize(
    ("call", "params"),
    [
        ({"method": "tools/call", "name": "search", "arguments": {"q": 1}}, {"name": "search", "arguments": {"q": 1}}),
        ({"method": "resources/read", "name": "docs://readme", "arguments": {}}, {"uri": "docs://readme"}),
        ({"method": "prompts/get", "name": "summarize", "arguments": {}}, {"name": "summarize"}),
        ({"method": "tools/list", "name": "", "arguments": {}}, None),
    ],
)
def test_the_call_becomes_the_json_rpc_request_the_gateway_parses(
    call: dict[str, Any], params: dict[str, Any] | None
) -> None:
    assert mcp_call(call) == call
    message = mcp_message(call)
    assert message["jsonrpc"] == "2.0" and message["method"] == call["method"]
    assert message.get("params") == params
