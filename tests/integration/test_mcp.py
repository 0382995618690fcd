"""MCP Services through the real gateway: the official `mcp` SDK client, an `mcp` SDK server as a process
upstream (tests/fakes/mcp_server.py), configs/mcp/docs-mcp.yaml applied as the user would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import yaml
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import REPO
from tests.integration.gateway_env import Gateway, apply_docs, fetch_token, raw
from tests.integration.mcp_env import McpServer, mcp_server

pytestmark = pytest.mark.usefixtures("loopback_names")

SERVICE_TOKEN = "docs-mcp-upstream-token-0004"
EXAMPLE = REPO / "configs" / "mcp" / "docs-mcp.yaml"


def _service(upstream: str, name: str = "docs-mcp") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["config"]["upstream"]["url"] = upstream
    return doc


@pytest.fixture
async def sse_server(tmp_path: Path) -> AsyncIterator[McpServer]:
    async with mcp_server(tmp_path, "sse") as server:
        yield server


@pytest.fixture
async def json_server(tmp_path: Path) -> AsyncIterator[McpServer]:
    async with mcp_server(tmp_path, "json") as server:
        yield server


@pytest.fixture
def mcp_gw(gw: Gateway, sse_server: McpServer, json_server: McpServer, tmp_path: Path) -> Iterator[Gateway]:
    gw.cluster.ctl("create", "secret", "docs-mcp-token", "--value", SERVICE_TOKEN, check=True)
    apply_docs(gw.cluster, [_service(sse_server.url), _service(json_server.url, "docs-mcp-json")], tmp_path)
    yield gw


@asynccontextmanager
async def _client(gw: Gateway, service: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, verify=gw.ssl_context())
    async with http, Client(streamable_http_client(gw.cluster.public_url(service) + "/mcp", http_client=http)) as c:
        yield c


async def _tokens(gw: Gateway) -> dict[str, str]:
    return {
        "alice": await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"]),
        "bob": await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"]),
    }


async def _tool_names(gw: Gateway, service: str, token: str) -> set[str]:
    async with _client(gw, service, token) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.parametrize("service", ["docs-mcp", "docs-mcp-json"])
async def test_tools_list_is_filtered_per_user(mcp_gw: Gateway, service: str) -> None:
    tokens = await _tokens(mcp_gw)
    assert await _tool_names(mcp_gw, service, tokens["alice"]) == {"search_docs", "whoami"}
    assert await _tool_names(mcp_gw, service, tokens["bob"]) == {"search_docs"}
    async with _client(mcp_gw, service, tokens["bob"]) as client:
        assert [r.name for r in (await client.list_prompts()).prompts] == ["summarize"]
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["docs://readme"]


async def test_allowed_and_denied_tool_calls(mcp_gw: Gateway, sse_server: McpServer) -> None:
    tokens = await _tokens(mcp_gw)
    async with _client(mcp_gw, "docs-mcp", tokens["bob"]) as client:
        found = await client.call_tool("search_docs", {"query": "wardgate-secret-query"})
        assert not found.is_error and found.content[0].text == "found: wardgate-secret-query"  # type: ignore[union-attr]
        for tool in ("delete_doc", "whoami"):
            with pytest.raises(MCPError) as denied:
                await client.call_tool(tool, {"name": "x"} if tool == "delete_doc" else {})
            assert denied.value.error.code == -32001
            message = denied.value.error.message
            assert "Access denied by Wardgate policy" in message and tool in message
    async with _client(mcp_gw, "docs-mcp", tokens["alice"]) as client:
        with pytest.raises(MCPError, match="delete_doc"):
            await client.call_tool("delete_doc", {"name": "x"})  # DENY for everyone, alice in dev and ops too
    calls = [e for e in mcp_gw.access_log() if e.get("service") == "docs-mcp" and "mcp" in e]
    logged = [
        (e["user"], e["mcp"].get("name"), e["mcp"]["decision"]) for e in calls if e["mcp"].get("method") == "tools/call"
    ]
    assert logged == [
        ("bob", "search_docs", "ALLOW"),
        ("bob", "delete_doc", "DENY"),
        ("bob", "whoami", "DENY"),
        ("alice", "delete_doc", "DENY"),
    ]
    assert not any("wardgate-secret-query" in orjson.dumps(e).decode() for e in mcp_gw.access_log())
    assert all("arguments" not in e["mcp"] for e in calls)


async def test_the_callers_token_never_reaches_themcp_server(mcp_gw: Gateway, sse_server: McpServer) -> None:
    tokens = await _tokens(mcp_gw)
    async with _client(mcp_gw, "docs-mcp", tokens["alice"]) as client:
        answer = await client.call_tool("whoami", {})
    assert answer.content[0].text == f"Bearer {SERVICE_TOKEN}"  # type: ignore[union-attr]
    seen = sse_server.authorizations()
    assert seen and set(seen) == {f"Bearer {SERVICE_TOKEN}"}
    assert not any(tokens["alice"] in line for line in seen)


async def test_unauthenticated_mcp_client_is_told_where_the_metadata_is(mcp_gw: Gateway) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    status, headers, _ = await raw(mcp_gw, "POST", "docs-mcp", "/mcp", json=ping)
    origin = mcp_gw.cluster.public_url("docs-mcp")
    assert status == 401
    assert f'resource_metadata="{origin}/.well-known/oauth-protected-resource"' in headers["www-authenticate"]
    status, _, body = await raw(mcp_gw, "GET", "docs-mcp", "/.well-known/oauth-protected-resource")
    meta = orjson.loads(body)
    assert status == 200 and meta["resource"] == origin + "/mcp"
    assert meta["authorization_servers"] == [mcp_gw.cluster.public_url()]
    status, _, body = await raw(mcp_gw, "GET", "", "/.well-known/oauth-authorization-server")
    assert status == 200 and orjson.loads(body)["token_endpoint"].endswith("/oauth2/token")


async def test_malformed_json_rpc_is_answered_by_the_gateway(mcp_gw: Gateway, sse_server: McpServer) -> None:
    token = (await _tokens(mcp_gw))["bob"]
    before = len(sse_server.authorizations())
    status, _, body = await raw(
        mcp_gw, "POST", "docs-mcp", "/mcp", data=b"{not json", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 400 and orjson.loads(body)["error"]["code"] == -32700
    assert len(sse_server.authorizations()) == before


async def test_a_session_stays_on_the_endpoint_that_created_it_and_with_its_user(
    mcp_gw: Gateway, sse_server: McpServer, json_server: McpServer, tmp_path: Path
) -> None:
    """Two replicas, round robin: without the pin every other request would reach the replica that does not
    know the session (404 from the SDK server)."""
    service = _service(sse_server.url, "docs-mcp-ha")
    del service["spec"]["config"]["upstream"]["url"]
    service["spec"]["config"]["upstream"]["endpoints"] = [{"url": sse_server.url}, {"url": json_server.url}]
    apply_docs(mcp_gw.cluster, [service], tmp_path)
    tokens = await _tokens(mcp_gw)
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {tokens['alice']}"}, verify=mcp_gw.ssl_context())
    url = mcp_gw.cluster.public_url("docs-mcp-ha") + "/mcp"
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        for i in range(4):
            found = await client.call_tool("search_docs", {"query": str(i)})
            assert found.content[0].text == f"found: {i}"  # type: ignore[union-attr]
    assert sorted([len(sse_server.authorizations()) > 0, len(json_server.authorizations()) > 0]) == [False, True]

    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    alice = {**accept, "Authorization": f"Bearer {tokens['alice']}"}
    status, headers, _ = await raw(mcp_gw, "POST", "docs-mcp-ha", "/mcp", json=initialize, headers=alice)
    assert status == 200 and headers["mcp-session-id"]
    seen = len(sse_server.authorizations()) + len(json_server.authorizations())
    bob = {**accept, "Authorization": f"Bearer {tokens['bob']}", "Mcp-Session-Id": headers["mcp-session-id"]}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    status, _, _ = await raw(mcp_gw, "POST", "docs-mcp-ha", "/mcp", json=listing, headers=bob)
    assert status == 404
    assert len(sse_server.authorizations()) + len(json_server.authorizations()) == seen


REDACT = """function onRequest(ctx)
  if ctx.request.mcp.method == "tools/call" and ctx.request.mcp.name == "search_docs" then
    local body = json.decode(wardgate.req.getRequestBody())
    body.params.arguments.query = "redacted " .. ctx.request.mcp.arguments.query:len()
    wardgate.req.setRequestBody(json.encode(body))
  end
end
"""


async def test_plugins_see_the_call_and_may_change_it(mcp_gw: Gateway, sse_server: McpServer, tmp_path: Path) -> None:
    service = _service(sse_server.url, "docs-mcp-lua")
    service["spec"]["config"]["http"]["plugins"] = [{"name": "redact", "lua": {"inline": REDACT}}]
    apply_docs(mcp_gw.cluster, [service], tmp_path)
    tokens = await _tokens(mcp_gw)
    async with _client(mcp_gw, "docs-mcp-lua", tokens["bob"]) as client:
        found = await client.call_tool("search_docs", {"query": "secret"})
        assert found.content[0].text == "found: redacted 6"  # type: ignore[union-attr]
        assert {t.name for t in (await client.list_tools()).tools} == {"search_docs"}
    entry = await mcp_gw.last_log(service="docs-mcp-lua", plugins=["redact"])
    assert entry["mcp"]["method"] in ("tools/list", "tools/call")


async def test_a_token_asked_for_one_mcp_service_is_good_only_there(mcp_gw: Gateway) -> None:
    resource = mcp_gw.cluster.public_url("docs-mcp") + "/mcp"
    async with AsyncOAuth2Client(
        client_id="bob-oauth", client_secret=mcp_gw.client_secrets["bob"], verify=mcp_gw.ssl_context()
    ) as oauth:
        bound = (await oauth.fetch_token(mcp_gw.token_url(), grant_type="client_credentials", resource=resource))[
            "access_token"
        ]
        with pytest.raises(OAuthError, match="invalid_target"):
            await oauth.fetch_token(
                mcp_gw.token_url(),
                grant_type="client_credentials",
                resource=mcp_gw.cluster.public_url("my-api") + "/mcp",
            )
    assert await _tool_names(mcp_gw, "docs-mcp", bound) == {"search_docs"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    elsewhere = {"Authorization": f"Bearer {bound}"}
    status, _, _ = await raw(mcp_gw, "POST", "docs-mcp-json", "/mcp", json=ping, headers=elsewhere)
    assert status == 401
    status, _, _ = await raw(mcp_gw, "POST", "my-api", "/chat/completions", json={}, headers=elsewhere)
    assert status == 401
    entry = await mcp_gw.last_log(service="docs-mcp-json", status=401)
    assert "not for this resource" in entry["reason"]


async def test_policy_eval_decides_an_mcp_call_as_the_gateway_does(mcp_gw: Gateway, sse_server: McpServer) -> None:
    tokens = await _tokens(mcp_gw)
    async with _client(mcp_gw, "docs-mcp", tokens["bob"]) as client:
        await client.call_tool("search_docs", {"query": "q"})
        with pytest.raises(MCPError):
            await client.call_tool("whoami", {})
    on_gateway = {
        e["mcp"]["name"]: e["mcp"]["decision"]
        for e in mcp_gw.access_log()
        if e.get("service") == "docs-mcp" and e.get("mcp", {}).get("method") == "tools/call"
    }
    assert on_gateway == {"search_docs": "ALLOW", "whoami": "DENY"}
    for user, tool, arguments, effect in (
        ("bob", "search_docs", '{"query": "q"}', "ALLOW"),
        ("bob", "whoami", "{}", "DENY"),
        ("alice", "whoami", "{}", "ALLOW"),
        ("alice", "delete_doc", '{"name": "x"}', "DENY"),
    ):
        args = ["--service", "docs-mcp", "--user", user, "--mcp-method", "tools/call", "--mcp-name", tool]
        result = mcp_gw.cluster.ctl("policy", "eval", *args, "--mcp-arguments", arguments, "-o", "json")
        assert result.returncode == (0 if effect == "ALLOW" else 3), result.stderr
        decision = orjson.loads(result.stdout)["decision"]
        assert decision["effect"] == effect, (user, tool, decision)
        if tool in on_gateway and user == "bob":
            assert decision["effect"] == on_gateway[tool]
    listing = mcp_gw.cluster.ctl(
        "policy", "eval", "--service", "docs-mcp", "--user", "bob", "--mcp-method", "tools/list"
    )
    assert listing.returncode == 0 and "decision: ALLOW" in listing.stdout
    denied = mcp_gw.cluster.ctl(
        "policy", "eval", "--service", "docs-mcp", "--user", "bob", "--mcp-method", "tools/call", "--mcp-name",
        "delete_doc",
    )  # fmt: skip
    assert denied.returncode == 3 and "decision: DENY" in denied.stdout
    bad = mcp_gw.cluster.ctl("policy", "eval", "--service", "docs-mcp", "--user", "bob", "--mcp-arguments", "[]")
    assert bad.returncode == 2 and "--mcp-method" in bad.stderr
