"""The usage ledger of a cluster on PostgreSQL: two nodes (two workers each) proxy calls, and `wardgatectl usage`
through either node shows the sum of both, exactly; with the database stopped for a moment the nodes keep serving,
and once it is back every call made meanwhile is in the ledger, none lost and none twice."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningCluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration import ha_env
from tests.integration.ha_env import admin_headers, call, chat_status, token_for
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.usefixtures("loopback_names")

KEY = "sk-ha-usage-upstream"
PROMPT_TOKENS = 4
"""The fake provider's prompt_tokens for ha_env.CHAT ("hi": one word, plus 3 per message)."""


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own: the test stops it."""
    server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def nodes(tmp_path: Path, own_postgres: PostgresServer) -> AsyncIterator[list[RunningCluster]]:
    fake = FakeOpenAI(api_key=KEY)
    async with fake.serve() as upstream:
        dsn = own_postgres.create_database()
        await asyncio.to_thread(ha_env.init_first, tmp_path / "a", dsn)
        await asyncio.to_thread(ha_env.join, tmp_path / "b", dsn, tmp_path / "a", "node-b")
        running = [await asyncio.to_thread(ha_env.run, tmp_path / h, 2) for h in ("a", "b")]
        try:
            path = tmp_path / "docs.yaml"
            path.write_text(yaml.safe_dump_all(ha_env.manifests(upstream)))
            running[0].ctl("apply", "-f", str(path), check=True)
            running[1].ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
            yield running
        finally:
            for node in running:
                if node.process.poll() is None:
                    await asyncio.to_thread(stop_cluster, node)
    for node in running:
        log = node.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]


async def _token(nodes: list[RunningCluster]) -> str:
    status, created = await call(
        nodes[0], "POST", nodes[0].url + "/api/v1/credentials",
        json={"name": "usage-bot", "user": ha_env.BOT, "type": "oauth2"}, headers=admin_headers(nodes[0]),
    )  # fmt: skip
    assert status == 200 and created is not None
    await ha_env.until_applied(nodes, time.perf_counter())
    token = await token_for(nodes[1], created["clientId"], created["clientSecret"])
    await ha_env.until_applied(nodes, time.perf_counter())
    return token


def _usage(node: RunningCluster) -> dict[str, Any]:
    result = node.ctl("usage", "--by", "user", "--since", "1h", "-o", "json", check=True)
    return {item["key"]: item for item in json.loads(result.stdout)["items"]}


async def _until_counted(nodes: list[RunningCluster], calls: int, within: float = 30.0) -> None:
    """Until `usage` through every node shows `calls` calls of the bot (the writers batch off the request path);
    then, a few batch intervals later, still exactly that many (nothing counted twice)."""
    deadline = time.monotonic() + within
    seen: list[Any] = []
    while True:
        seen = [(await asyncio.to_thread(_usage, node)).get(ha_env.BOT, {}).get("requests") for node in nodes]
        if seen == [calls] * len(nodes):
            break
        assert time.monotonic() < deadline, f"usage through the nodes: {seen}, expected {calls} each"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    for node in nodes:
        bot = (await asyncio.to_thread(_usage, node))[ha_env.BOT]
        assert bot["requests"] == calls and bot["inputTokens"] == calls * PROMPT_TOKENS, (node.home.name, bot)


async def test_usage_through_either_node_is_the_whole_clusters(nodes: list[RunningCluster]) -> None:
    a, b = nodes
    token = await _token(nodes)
    calls = [chat_status(a, token) for _ in range(7)] + [chat_status(b, token) for _ in range(5)]
    statuses = await asyncio.gather(*calls)
    assert list(statuses) == [200] * 12
    await _until_counted(nodes, 12)
    status, body = await call(a, "GET", a.url + "/api/v1/usage?by=user&since=1h", headers=admin_headers(a))
    assert status == 200 and body is not None and body["items"][0]["key"] == ha_env.BOT


async def test_postgres_down_for_a_moment_loses_no_usage(
    nodes: list[RunningCluster], own_postgres: PostgresServer
) -> None:
    a, b = nodes
    token = await _token(nodes)
    assert [await chat_status(node, token) for node in (a, b) for _ in range(3)] == [200] * 6
    await _until_counted(nodes, 6)
    await asyncio.to_thread(own_postgres.stop)
    # Down: the proxy keeps serving (the ledger waits in each worker's queue); reading the ledger is a 503.
    assert [await chat_status(node, token) for node in (a, b) for _ in range(5)] == [200] * 10
    status, body = await call(a, "GET", a.url + "/api/v1/usage?by=user&since=1h", headers=admin_headers(a))
    assert status == 503 and "usage ledger" in json.dumps(body), (status, body)
    await asyncio.sleep(1.0)  # several failed write attempts, with backoff
    await asyncio.to_thread(own_postgres.start)
    for node in nodes:
        await asyncio.to_thread(ha_env.wait_ready, node, 30)
    await _until_counted(nodes, 16)
    metrics = await asyncio.to_thread(_metrics, a)
    assert 'wardgate_usage_ledger_failures_total{kind="write"' in metrics and 'kind="dropped"' not in metrics


def _metrics(node: RunningCluster) -> str:
    with urllib.request.urlopen(node.url + "/metrics", context=node.ssl_context(), timeout=10) as response:
        text: str = response.read().decode()
    return text
