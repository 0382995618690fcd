"""An MCP Service through the WireGuard tunnel, as root across network namespaces: alice and bob connect with
`wardgate connect`, and the official `mcp` SDK in each client's namespace reaches
`http://docs-mcp.local.<domain>/mcp` with no token at all (the tunnel address is the identity). Each sees only
the tools its groups may call, an allowed call goes through with the Service's secret, a denied one is a
JSON-RPC error. The topology and processes are test_client_access's (its `setup` fixture); the MCP server is
an `mcp` SDK server process on the node's loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, REPO
from tests.netns.test_client_access import (  # noqa: F401  (setup is a fixture)
    ZONE,
    Client,
    Setup,
    _connect,
    _login,
    _wait_port,
    run,
    setup,
    wait_for,
)

pytestmark = pytest.mark.netns

MCP_PORT = 8931
SERVICE_TOKEN = "docs-mcp-tunnel-token-0006"

SDK = r"""
import asyncio, json, sys
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

async def main() -> None:
    out = {}
    async with Client(streamable_http_client(sys.argv[1])) as client:
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        found = await client.call_tool("search_docs", {"query": "over the tunnel"})
        out["search"] = found.content[0].text
        for tool in ("whoami", "delete_doc"):
            try:
                answer = await client.call_tool(tool, {"name": "x"} if tool == "delete_doc" else {})
                out[tool] = {"ok": True, "text": answer.content[0].text}
            except MCPError as exc:
                out[tool] = {"ok": False, "code": exc.error.code, "message": exc.error.message}
    print(json.dumps(out))

asyncio.run(main())
"""


def _service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "configs" / "mcp" / "docs-mcp.yaml").read_text())
    doc["spec"]["isPublic"] = False
    doc["spec"]["config"]["upstream"]["url"] = f"http://127.0.0.1:{MCP_PORT}/mcp"
    return doc


def _mcp(client: Client) -> dict[str, Any]:
    result = run(
        "ip", "netns", "exec", client.netns, str(BIN / "python"), "-c", SDK, f"http://docs-mcp.{ZONE}/mcp",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


async def test_an_mcp_service_through_the_tunnel_filters_per_user(setup: Setup, tmp_path: Path) -> None:  # noqa: F811
    node = setup.node
    seen = tmp_path / "mcp-seen.txt"
    server = node.start(
        "mcp", "env", f"WARDGATE_MCP_SEEN={seen}", str(BIN / "python"), "-m", "tests.fakes.mcp_server",
        str(MCP_PORT), "sse",
    )  # fmt: skip
    await _wait_port(node.netns, "127.0.0.1", MCP_PORT, server, node)
    node.ctl("create", "secret", "docs-mcp-token", "--value", SERVICE_TOKEN)
    manifest = tmp_path / "mcp.yaml"
    manifest.write_text(yaml.safe_dump(_service()))
    node.ctl("apply", "-f", str(manifest))
    for client in (setup.alice, setup.bob):
        _login(client, setup, setup.tokens[client.name])
        _connect(client)

    async def resolves() -> bool:
        probe = run("ip", "netns", "exec", setup.alice.netns, "getent", "hosts", f"docs-mcp.{ZONE}")
        return probe.returncode == 0

    await wait_for(resolves, 10, "docs-mcp resolves in the tunnel zone", 0.1)
    alice, bob = _mcp(setup.alice), _mcp(setup.bob)

    assert alice["tools"] == ["search_docs", "whoami"] and bob["tools"] == ["search_docs"]
    assert alice["search"] == bob["search"] == "found: over the tunnel"
    assert alice["whoami"] == {"ok": True, "text": f"Bearer {SERVICE_TOKEN}"}
    assert bob["whoami"]["ok"] is False and bob["whoami"]["code"] == -32001
    for answer in (alice, bob):
        assert answer["delete_doc"]["ok"] is False and "delete_doc" in answer["delete_doc"]["message"]
    assert set(seen.read_text().splitlines()) == {f"Bearer {SERVICE_TOKEN}"}

    calls = [
        (e["user"], e["mcp"]["name"], e["mcp"]["decision"])
        for e in node.access_log()
        if e.get("listener") == "tunnel" and e.get("mcp", {}).get("method") == "tools/call"
    ]
    assert sorted(calls) == sorted(
        [
            ("alice", "search_docs", "ALLOW"),
            ("alice", "whoami", "ALLOW"),
            ("alice", "delete_doc", "DENY"),
            ("bob", "search_docs", "ALLOW"),
            ("bob", "whoami", "DENY"),
            ("bob", "delete_doc", "DENY"),
        ]
    )
    tunnel = [e for e in node.access_log() if e.get("listener") == "tunnel" and e.get("service") == "docs-mcp"]
    assert {e["sessionType"] for e in tunnel} == {"CLIENT"}
