"""State a client carries between requests works on every worker (`run --workers 2`, real processes, real TLS).

Every request below goes on a new connection, which SO_REUSEPORT hands to either worker. These must work
wherever each request lands: the browser login (the pending login between /login and the callback), a
multi-server MCP session (the servers' session ids behind the gateway's), and a one-upstream MCP session
pinned to its replica and user. Each worker's own metric files prove that both workers served MCP calls.
The per-tool MCP metrics are read from `/metrics`, summed over the workers.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import Gateway, apply_docs, create_credential, fetch_token
from tests.integration.mcp_env import McpServer, mcp_server
from tests.integration.test_browser_login import (
    CAROL,
    CLIENT_SECRET,
    Env,
    idp_doc,
    run_idp,
    service_doc,
    user_doc,
)

pytestmark = [
    pytest.mark.usefixtures("loopback_names"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

LOGINS = 8
ROUNDS = 12
SERVICE_TOKEN = "tools-mcp-upstream-token-0011"
ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _new_connections() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(), connector=aiohttp.TCPConnector(force_close=True))


async def test_browser_logins_finish_on_whichever_worker_gets_the_callback(tmp_path: Path) -> None:
    upstream = FakeOpenAI()
    with run_idp() as (idp_url, tap):
        async with upstream.serve() as upstream_url:
            cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", workers=2)
            try:
                cluster.ctl("create", "secret", "idp-client", "--value", CLIENT_SECRET, check=True)
                docs = [idp_doc("main", idp_url), service_doc(upstream_url), user_doc("carol", CAROL)]
                apply_docs(cluster, docs, tmp_path)
                env = Env(cluster, idp_url, tap, upstream, tmp_path)
                await env.set_idp_user(CAROL, {"email": CAROL, "email_verified": True})
                for _ in range(LOGINS):
                    async with _new_connections() as browser:
                        callback_url, _ = await env.to_callback(browser)
                        callback = await env.get(browser, callback_url)
                        assert callback.status == 302, callback.body
                        assert callback.cookie("wardgate_session") is not None
                        assert (await env.get(browser, callback.location)).status == 200
            finally:
                await asyncio.to_thread(stop_cluster, cluster)
    callbacks = env.log("callback")
    assert [e["status"] for e in callbacks] == [302] * LOGINS, [e.get("reason") for e in callbacks]
    assert "Traceback" not in cluster.log_path.read_text()


def _mcp_docs(docs: str, issues: str) -> list[dict[str, Any]]:
    rules = [
        {"effect": "ALLOW", "condition": {"match": 'ctx.request.mcp.method != "tools/call"'}},
        {"effect": "ALLOW", "condition": {"match": 'ctx.request.mcp.name.contains("_search_")'}},
        {"effect": "ALLOW", "condition": {"match": 'ctx.request.mcp.name.startsWith("gh_nope_")'}},
    ]
    service = {
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
    users = [{"kind": "User", "metadata": {"name": n}, "spec": {"type": "WORKLOAD"}} for n in ("alice", "bob")]
    return [*users, service]


@pytest.fixture
async def mcp_cluster(tmp_path: Path) -> AsyncIterator[tuple[Gateway, McpServer, McpServer]]:
    async with mcp_server(tmp_path, "sse") as docs, mcp_server(tmp_path, "json", "issues") as issues:
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", workers=2)
        try:
            cluster.ctl("create", "secret", "tools-mcp-token", "--value", SERVICE_TOKEN, check=True)
            apply_docs(cluster, _mcp_docs(docs.url, issues.url), tmp_path)
            gw = Gateway(cluster, {})
            for user in ("alice", "bob"):
                gw.client_secrets[user] = create_credential(cluster, f"{user}-oauth", user, "oauth2")
            yield gw, docs, issues
        finally:
            await asyncio.to_thread(stop_cluster, cluster)


async def _post(
    gw: Gateway, token: str, body: Any, sid: str | None = None, service: str = "tools-mcp"
) -> tuple[int, dict[str, str], Any]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}", **({"Mcp-Session-Id": sid} if sid else {})}
    url = gw.cluster.public_url(service) + "/mcp"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(url, json=body, headers=headers, ssl=gw.ssl_context()) as r,
    ):
        text = await r.text()
        if r.content_type == "text/event-stream":  # a one-upstream Service relays the server's stream
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        answer = json.loads(text) if r.status != 202 else None
        return r.status, {k.lower(): v for k, v in r.headers.items()}, answer


def _call(id_: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def _mcp_per_worker(directory: Path, method: str | None = None) -> list[float]:
    """MCP calls (of `method`, or all) counted in each worker's own counter file."""
    counts = []
    for path in sorted(directory.glob("counter_*.db")):
        families = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
        counts.append(
            sum(
                s.value
                for f in families
                for s in f.samples
                if s.name == "wardgate_mcp_calls_total" and method in (None, s.labels["method"])
            )
        )
    return counts


def _samples(cluster: RunningCluster, name: str) -> dict[tuple[str, str, str], float]:
    """(method, tool, decision) ─▶ value of `name` for the tools-mcp Service in `/metrics`."""
    with urllib.request.urlopen(cluster.url + "/metrics", context=cluster.ssl_context(), timeout=10) as r:
        text = r.read().decode()
    found: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match is None or match[1] != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if labels.get("service") == "tools-mcp":
            key = (labels["method"], labels["tool"], labels.get("decision", ""))
            found[key] = found.get(key, 0.0) + float(match[3])
    return found


async def test_a_multi_server_session_works_on_every_worker_and_stays_with_its_user(
    mcp_cluster: tuple[Gateway, McpServer, McpServer],
) -> None:
    gw, _, _ = mcp_cluster
    alice = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    bob = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
    status, headers, _ = await _post(gw, alice, INITIALIZE)
    assert status == 200
    sid = headers["mcp-session-id"]
    status, _, _ = await _post(gw, alice, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    assert status == 202
    # Each worker learns the tool names for its metric labels from a list it relays: list until both have.
    metrics_dir = gw.cluster.home / "run" / "metrics"
    for _ in range(60):
        status, _, listed = await _post(gw, alice, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        assert status == 200 and "gh_search_issues" in {t["name"] for t in listed["result"]["tools"]}
        if len([c for c in _mcp_per_worker(metrics_dir, "tools/list") if c > 0]) == 2:
            break
    else:
        raise AssertionError(f"one worker served every call: {_mcp_per_worker(metrics_dir)}")
    for i in range(ROUNDS):
        status, _, found = await _post(gw, alice, _call(10 + i, "docs_search_docs", {"query": f"q{i}"}), sid)
        assert status == 200 and found["result"]["content"][0]["text"] == f"found: q{i}", found
        status, _, read = await _post(
            gw,
            alice,
            {"jsonrpc": "2.0", "id": 40 + i, "method": "resources/read", "params": {"uri": "issues://open"}},
            sid,
        )
        assert status == 200 and read["result"]["contents"][0]["text"] == "3 open", read
        status, _, denied = await _post(gw, alice, _call(70 + i, "docs_delete_doc", {"name": "x"}), sid)
        assert status == 200 and denied["error"]["code"] == -32001, denied
        status, _, _ = await _post(gw, alice, _call(100 + i, f"gh_nope_{i}", {}), sid)  # allowed, unknown upstream
        assert status == 200
        status, _, random = await _post(gw, alice, _call(130 + i, f"random_{i}", {}), sid)
        assert status == 200 and random["error"]["code"] == -32001
        status, _, foreign = await _post(gw, bob, {"jsonrpc": "2.0", "id": 160 + i, "method": "tools/list"}, sid)
        assert status == 404 and foreign["error"]["message"] == "Session not found"
    calls = _samples(gw.cluster, "wardgate_mcp_calls_total")
    assert calls[("tools/call", "docs_search_docs", "allow")] == ROUNDS
    assert calls[("tools/call", "docs_delete_doc", "deny")] == ROUNDS
    assert calls[("tools/call", "other", "allow")] == ROUNDS  # gh_nope_<i>: no server listed them
    assert calls[("tools/call", "other", "deny")] == ROUNDS  # random_<i>
    assert calls[("resources/read", "-", "allow")] == ROUNDS
    tools = {tool for (_, tool, _) in calls}
    assert tools <= {"docs_search_docs", "docs_delete_doc", "docs_whoami", "gh_search_issues", "gh_close_issue"} | {
        "other",
        "-",
    }, tools
    durations = _samples(gw.cluster, "wardgate_mcp_call_duration_seconds_count")
    assert durations[("tools/call", "docs_search_docs", "")] == ROUNDS
    per_worker = _mcp_per_worker(metrics_dir)
    assert len([c for c in per_worker if c > 0]) == 2, per_worker

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        ended = {**ACCEPT, "Authorization": f"Bearer {alice}", "Mcp-Session-Id": sid}
        url = gw.cluster.public_url("tools-mcp") + "/mcp"
        async with session.delete(url, headers=ended, ssl=gw.ssl_context()) as r:
            assert r.status == 200
    status, _, gone = await _post(gw, alice, {"jsonrpc": "2.0", "id": 200, "method": "tools/list"}, sid)
    assert status == 404 and gone["error"]["message"] == "Session not found"
    assert "Traceback" not in gw.cluster.log_path.read_text()


async def test_a_session_of_one_upstream_stays_on_its_replica_and_user_on_every_worker(
    mcp_cluster: tuple[Gateway, McpServer, McpServer], tmp_path: Path
) -> None:
    """Two replicas that each know only their own sessions, two workers: every request on a new connection
    must reach the replica that created the session, and only for its user, whichever worker takes it."""
    gw, docs, _ = mcp_cluster
    async with mcp_server(tmp_path, "json") as replica:
        rules = [{"effect": "ALLOW", "condition": {"match": 'ctx.user.metadata.name in ["alice", "bob"]'}}]
        service = {
            "kind": "Service",
            "metadata": {"name": "docs-ha"},
            "spec": {
                "mode": "MCP",
                "isPublic": True,
                "config": {
                    "upstream": {"endpoints": [{"url": docs.url}, {"url": replica.url}]},
                    "http": {"auth": {"bearer": {"fromSecret": "tools-mcp-token"}}},
                },
                "authorization": {"inlinePolicies": [{"spec": {"rules": rules}}]},
            },
        }
        apply_docs(gw.cluster, [service], tmp_path)
        alice = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
        bob = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
        status, headers, _ = await _post(gw, alice, INITIALIZE, service="docs-ha")
        assert status == 200
        sid = headers["mcp-session-id"]
        assert len(sid) > 100  # sealed: the replica's own session id (32 hex digits) is not what the client sees
        status, _, _ = await _post(gw, alice, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid, "docs-ha")
        assert status == 202
        altered = sid[:20] + ("A" if sid[20] != "A" else "B") + sid[21:]
        for i in range(ROUNDS):
            status, answered, found = await _post(
                gw, alice, _call(10 + i, "search_docs", {"query": f"q{i}"}), sid, "docs-ha"
            )
            assert status == 200 and found["result"]["content"][0]["text"] == f"found: q{i}", found
            assert answered.get("mcp-session-id", sid) == sid
            status, _, _ = await _post(gw, bob, _call(40 + i, "search_docs", {"query": "x"}), sid, "docs-ha")
            assert status == 404
            status, _, _ = await _post(gw, alice, _call(70 + i, "search_docs", {"query": "x"}), altered, "docs-ha")
            assert status == 404
    per_worker = _mcp_per_worker(gw.cluster.home / "run" / "metrics")
    assert len([c for c in per_worker if c > 0]) == 2, per_worker
    refusals = [e.get("reason", "") for e in gw.access_log() if e.get("service") == "docs-ha" and e["status"] == 404]
    assert len(refusals) == 2 * ROUNDS
    assert refusals.count("mcp: the session belongs to another user") == ROUNDS
