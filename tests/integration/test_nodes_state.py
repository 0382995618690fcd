"""MCP sessions across two nodes over one PostgreSQL (`init --store`, `join`): a session begun on one node goes
on through the other, which never saw it (the session id is sealed with a key derived from the store key that
`join` gives every node), and stays with its user there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningCluster, stop_cluster
from tests.integration import ha_env
from tests.integration.gateway_env import Gateway, apply_docs, create_credential, fetch_token
from tests.integration.mcp_env import mcp_server
from tests.integration.test_workers_state import INITIALIZE, _call, _mcp_docs, _post
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.usefixtures("loopback_names")

ROUNDS = 6


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def nodes(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[list[Gateway]]:
    dsn = postgres.create_database()
    await asyncio.to_thread(ha_env.init_first, tmp_path / "a", dsn)
    await asyncio.to_thread(ha_env.join, tmp_path / "b", dsn, tmp_path / "a", "node-b")
    running: list[RunningCluster] = []
    try:
        for home in ("a", "b"):
            running.append(await asyncio.to_thread(ha_env.run, tmp_path / home, 1))
        yield [Gateway(node, {}) for node in running]
    finally:
        for node in running:
            if node.process.poll() is None:
                await asyncio.to_thread(stop_cluster, node)
    for node in running:
        assert "Traceback" not in node.log_path.read_text()


async def test_mcp_sessions_begun_on_one_node_go_on_through_the_other(nodes: list[Gateway], tmp_path: Path) -> None:
    a, b = nodes
    async with mcp_server(tmp_path, "sse") as docs, mcp_server(tmp_path, "json", "issues") as issues:
        a.cluster.ctl("create", "secret", "tools-mcp-token", "--value", "nodes-upstream-token-0012", check=True)
        single = {
            "kind": "Service",
            "metadata": {"name": "docs-one"},
            "spec": {
                "mode": "MCP",
                "isPublic": True,
                "config": {"upstream": {"url": docs.url}},
                "authorization": {
                    "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]
                },
            },
        }
        apply_docs(a.cluster, [*_mcp_docs(docs.url, issues.url), single], tmp_path)
        secrets = {user: create_credential(a.cluster, f"{user}-oauth", user, "oauth2") for user in ("alice", "bob")}
        alice = await fetch_token(a, "alice-oauth", secrets["alice"])
        bob = await fetch_token(b, "bob-oauth", secrets["bob"])
        for service, tool in (("tools-mcp", "docs_search_docs"), ("docs-one", "search_docs")):
            status, headers, _ = await _post(a, alice, INITIALIZE, service=service)
            assert status == 200, service
            sid = headers["mcp-session-id"]
            for i in range(ROUNDS):
                node = (a, b)[i % 2]
                status, _, found = await _post(node, alice, _call(10 + i, tool, {"query": f"q{i}"}), sid, service)
                assert status == 200 and found["result"]["content"][0]["text"] == f"found: q{i}", (service, found)
                status, _, _ = await _post(b, bob, _call(40 + i, tool, {"query": "x"}), sid, service)
                assert status == 404, service
