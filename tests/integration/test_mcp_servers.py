"""Several MCP servers behind one MCP Service (`upstream.mcpServers`), through the real gateway: two `mcp` SDK
server processes (one answering JSON, one SSE), the official SDK client, each server's names behind its
prefix, policies written against the prefixed names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.integration.gateway_env import Gateway, apply_docs, fetch_token, raw
from tests.integration.mcp_env import McpServer, mcp_server

pytestmark = pytest.mark.usefixtures("loopback_names")

SERVICE_TOKEN = "tools-mcp-upstream-token-0007"


def _service(docs: str, issues: str) -> dict[str, Any]:
    rules = [
        {"effect": "ALLOW", "condition": {"match": 'ctx.request.mcp.method != "tools/call"'}},
        {
            "effect": "ALLOW",
            "condition": {"match": 'ctx.request.mcp.name.contains("_search_") && "dev" in ctx.user.spec.groups'},
        },
        {
            "effect": "ALLOW",
            "condition": {"match": 'ctx.request.mcp.name == "gh_close_issue" && "ops" in ctx.user.spec.groups'},
        },
        {"effect": "DENY", "condition": {"match": 'ctx.request.mcp.name.startsWith("docs_delete_")'}},
    ]
    return {
        "kind": "Service",
        "metadata": {"name": "tools-mcp"},
        "spec": {
            "mode": "MCP",
            "isPublic": True,
            "config": {
                "upstream": {
                    "mcpServers": [
                        {"name": "docs", "prefix": "docs_", "url": docs},
                        {"name": "issues", "prefix": "gh_", "url": issues},
                    ]
                },
                "http": {"auth": {"bearer": {"fromSecret": "tools-mcp-token"}}},
            },
            "authorization": {"inlinePolicies": [{"spec": {"rules": rules}}]},
        },
    }


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[McpServer, McpServer]]:
    async with mcp_server(tmp_path, "sse") as docs, mcp_server(tmp_path, "json", "issues") as issues:
        yield docs, issues


async def test_two_servers_listed_and_called_as_one(
    gw: Gateway, servers: tuple[McpServer, McpServer], tmp_path: Path
) -> None:
    docs, issues = servers
    gw.cluster.ctl("create", "secret", "tools-mcp-token", "--value", SERVICE_TOKEN, check=True)
    apply_docs(gw.cluster, [_service(docs.url, issues.url)], tmp_path)
    tokens = {
        "alice": await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"]),
        "bob": await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"]),
    }
    url = gw.cluster.public_url("tools-mcp") + "/mcp"
    seen: dict[str, set[str]] = {}
    for user, token in tokens.items():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, verify=gw.ssl_context())
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            seen[user] = {t.name for t in (await client.list_tools()).tools}
            found = await client.call_tool("docs_search_docs", {"query": "q1"})
            assert found.content[0].text == "found: q1"  # type: ignore[union-attr]
            found = await client.call_tool("gh_search_issues", {"query": "q2"})
            assert found.content[0].text == "issues: q2"  # type: ignore[union-attr]
            assert {p.name for p in (await client.list_prompts()).prompts} == {"docs_summarize", "gh_triage"}
            resources = {str(r.uri): r.name for r in (await client.list_resources()).resources}
            assert resources == {"docs://readme": "docs_readme", "issues://open": "gh_open_issues"}
            assert (await client.read_resource("issues://open")).contents[0].text == "3 open"  # type: ignore[union-attr]
            prompt = await client.get_prompt("gh_triage", {"text": "bug"})
            assert "Triage: bug" in str(prompt.messages[0].content)
            if user == "bob":
                with pytest.raises(MCPError) as denied:
                    await client.call_tool("gh_close_issue", {"number": 7})
                assert denied.value.error.code == -32001 and "gh_close_issue" in denied.value.error.message
            else:
                closed = await client.call_tool("gh_close_issue", {"number": 7})
                assert closed.content[0].text == "closed: 7"  # type: ignore[union-attr]
            with pytest.raises(MCPError, match="docs_delete_doc"):
                await client.call_tool("docs_delete_doc", {"name": "x"})
            with pytest.raises(MCPError, match="no server has its prefix"):
                await client.call_tool("xx_search_docs", {"query": "no such server"})
    assert seen["bob"] == {"docs_search_docs", "gh_search_issues"}
    assert seen["alice"] == {"docs_search_docs", "gh_search_issues", "gh_close_issue"}
    for server in servers:
        assert server.authorizations() and set(server.authorizations()) == {f"Bearer {SERVICE_TOKEN}"}
    logged = [
        (e["user"], e["mcp"]["name"], e["mcp"]["decision"])
        for e in gw.access_log()
        if e.get("service") == "tools-mcp" and e.get("mcp", {}).get("method") == "tools/call"
    ]
    assert ("bob", "gh_close_issue", "DENY") in logged and ("alice", "gh_close_issue", "ALLOW") in logged


async def test_a_session_of_several_servers_stays_with_its_user(
    gw: Gateway, servers: tuple[McpServer, McpServer], tmp_path: Path
) -> None:
    docs, issues = servers
    gw.cluster.ctl("create", "secret", "tools-mcp-token", "--value", SERVICE_TOKEN, check=True)
    apply_docs(gw.cluster, [_service(docs.url, issues.url)], tmp_path)
    alice = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    bob = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    status, headers, _ = await raw(
        gw, "POST", "tools-mcp", "/mcp", json=initialize, headers={**accept, "Authorization": f"Bearer {alice}"}
    )
    assert status == 200 and headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    foreign = {**accept, "Authorization": f"Bearer {bob}", "Mcp-Session-Id": headers["mcp-session-id"]}
    status, _, _ = await raw(gw, "POST", "tools-mcp", "/mcp", json=listing, headers=foreign)
    assert status == 404
    own = {**accept, "Authorization": f"Bearer {alice}", "Mcp-Session-Id": headers["mcp-session-id"]}
    status, _, body = await raw(gw, "POST", "tools-mcp", "/mcp", json=listing, headers=own)
    assert status == 200 and b"gh_close_issue" in body
    status, _, _ = await raw(gw, "DELETE", "tools-mcp", "/mcp", headers=own)
    assert status == 200
    status, _, _ = await raw(gw, "POST", "tools-mcp", "/mcp", json=listing, headers=own)
    assert status == 404
