"""Quotas end to end: the real cluster process (1 and 4 workers), the openai SDK, the fake provider, and a real
Redis (Debian's redis-server) for counters shared by every worker, stopped mid-run for the failure modes."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs, create_credential
from tests.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("loopback_names")

KEY = "sk-quota-upstream"
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello quota"}]}


def _docs(upstream: str, limits: list[dict[str, Any]], fail_mode: str = "closed", per: str = "user") -> list[Any]:
    allow = {"effect": "ALLOW", "condition": {"matchAny": True}}
    return [
        {"kind": "User", "metadata": {"name": "bot"}, "spec": {"type": "WORKLOAD", "groups": ["dev"]}},
        {"kind": "User", "metadata": {"name": "other"}, "spec": {"type": "WORKLOAD"}},
        {"kind": "Group", "metadata": {"name": "dev"}, "spec": {}},
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {
                "isPublic": True,
                "config": {"upstream": {"url": upstream}, "http": {"auth": {"bearer": {"fromSecret": "upstream-key"}}}},
                "authorization": {"inlinePolicies": [{"spec": {"rules": [allow]}}]},
            },
        },
        {
            "kind": "Quota",
            "metadata": {"name": "dev-limits"},
            "spec": {"subjects": {"groups": ["dev"]}, "per": per, "limits": limits, "failMode": fail_mode},
        },
        {
            "kind": "Pricing",
            "metadata": {"name": "openai"},
            "spec": {"models": [{"model": "gpt-4o-mini", "input": 150000, "output": 600000}]},
        },
    ]


async def _cluster(
    tmp_path: Path, upstream: str, docs: list[Any], workers: int = 1, settings: str = ""
) -> RunningCluster:
    cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", extra_settings=settings, workers=workers)
    apply_docs(cluster, docs, tmp_path)
    cluster.ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
    return cluster


_opened: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """A test that fails midway still closes its SDK clients (an unclosed socket fails a later test)."""
    yield
    while _opened:
        await _opened.pop().close()


def _client(cluster: RunningCluster, token: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(
        base_url=cluster.public_url("llm") + "/v1",
        api_key=token,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=cluster.ssl_context()),
    )
    _opened.append(client)
    return client


def _log(cluster: RunningCluster) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cluster.access_log()]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    provider = FakeOpenAI(api_key=KEY)
    async with provider.serve() as url:
        yield provider, url


async def test_the_openai_sdk_sees_rate_limit_error_with_openai_headers(tmp_path: Path, fake: Any) -> None:
    limits = [{"requests": 3, "window": "1m"}, {"requests": 100, "window": "1h"}, {"tokens": 100000, "window": "1d"}]
    cluster = await _cluster(tmp_path, fake[1], _docs(fake[1], limits))
    try:
        token = create_credential(cluster, "bot-pat", "bot", "access-token")
        client = _client(cluster, token)
        tokens_left = []
        for call in range(3):
            # A success under a Quota: OpenAI's x-ratelimit-* headers for the tightest limit (3/1m, not 100/1h).
            raw = await client.chat.completions.with_raw_response.create(**CHAT)
            assert raw.parse().choices
            ok = raw.headers
            assert ok["x-ratelimit-limit-requests"] == "3"
            assert ok["x-ratelimit-remaining-requests"] == str(2 - call)
            assert re.fullmatch(r"(\d+m)?\d+s|\d+ms", ok["x-ratelimit-reset-requests"])
            assert ok["x-ratelimit-limit-tokens"] == "100000"
            tokens_left.append(int(ok["x-ratelimit-remaining-tokens"]))
            assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", ok["x-ratelimit-reset-tokens"])
            assert "retry-after" not in ok
        # Each call reserves its estimate (prompt + 1024 output tokens) and settles to its real usage off the
        # request path, a moment later. So a later call sees at least the earlier ones' real usage, and, when a
        # settlement has not landed yet, their reservations too: what is left may rise again between calls.
        assert all(100000 - 3 * 1100 < left < 100000 for left in tokens_left), tokens_left
        assert tokens_left[0] > tokens_left[1] and tokens_left[0] > tokens_left[2], tokens_left
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**CHAT)
        await client.close()
        error = caught.value
        headers = error.response.headers
        assert error.status_code == 429 and error.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "dev-limits" in error.message
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(r"(\d+m)?\d+s|\d+ms", headers["x-ratelimit-reset-requests"])
        assert 1 <= int(headers["retry-after"]) <= 60
        assert len(fake[0].requests) == 3
        other = create_credential(cluster, "other-pat", "other", "access-token")  # not in group dev: no quota
        outsider = _client(cluster, other)
        free = await outsider.chat.completions.with_raw_response.create(**CHAT)
        assert free.parse().choices and not [h for h in free.headers if h.lower().startswith("x-ratelimit-")]
        await outsider.close()
        refused = [e for e in _log(cluster) if e.get("status") == 429]
        assert refused[-1]["quota"] == {"name": "dev-limits", "measure": "requests", "window": "requests/1m",
                                        "outcome": "refused"}  # fmt: skip
        answered = [e for e in _log(cluster) if e.get("status") == 200 and e.get("user") == "bot"]
        assert answered[-1]["cost"] > 0 and answered[-1]["usage"]["total_tokens"] > 0
        await _ledger_and_quota_views(cluster)
    finally:
        await asyncio.to_thread(stop_cluster, cluster)


async def _ledger_and_quota_views(cluster: RunningCluster) -> None:
    """The ledger (batched off the request path) and `get quotas` (the live counters) through wardgatectl."""
    for _ in range(50):
        result = cluster.ctl("usage", "--by", "user", "--since", "1h", "-o", "json", check=True)
        items = {i["key"]: i for i in json.loads(result.stdout)["items"]}
        if items.get("bot", {}).get("requests") == 3 and "other" in items:
            break
        await asyncio.sleep(0.1)
    assert items["bot"]["requests"] == 3 and items["bot"]["cost"] > 0 and items["other"]["requests"] == 1
    by_group = cluster.ctl("usage", "--by", "group", "-o", "csv", check=True).stdout.splitlines()
    assert by_group[0].startswith("group,requests") and by_group[1].startswith("dev,3,")
    table = cluster.ctl("get", "quotas", check=True).stdout
    # The tightest counter of the key; 3/100 per hour if the minute's window ended since the calls.
    busiest = "user=bot 3/3 requests/1m" in table or "user=bot 3/100 requests/1h" in table
    assert "dev-limits" in table and "group=dev" not in table and busiest, table


async def test_budget_refusal_is_insufficient_quota(tmp_path: Path, fake: Any) -> None:
    # 150000 per million input: every prompt token costs 0.15; one call costs more than 1.00.
    cluster = await _cluster(tmp_path, fake[1], _docs(fake[1], [{"cost": 1.0, "window": "30d"}]))
    try:
        token = create_credential(cluster, "bot-pat", "bot", "access-token")
        client = _client(cluster, token)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**CHAT, max_tokens=5)
        await client.close()
        assert caught.value.body["type"] == "insufficient_quota"  # type: ignore[index]
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert not fake[0].requests
    finally:
        await asyncio.to_thread(stop_cluster, cluster)


async def _burst(cluster: RunningCluster, token: str, count: int) -> list[int]:
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    url = cluster.public_url("llm") + "/v1/chat/completions"

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(url, json=CHAT, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            return r.status

    # A connection per request: SO_REUSEPORT spreads them over the workers.
    connector = aiohttp.TCPConnector(force_close=True, ssl=context, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(one(session) for _ in range(count)))


@pytest.mark.parametrize("with_redis", [False, True], ids=["node-file", "redis"])
async def test_exactly_the_limit_passes_across_four_workers(tmp_path: Path, fake: Any, with_redis: bool) -> None:
    redis = RedisServer()
    settings = ""
    if with_redis:
        redis.start()
        settings = f'[usage]\nredis = "{redis.url}"\n'
    try:
        cluster = await _cluster(tmp_path, fake[1], _docs(fake[1], [{"requests": 50, "window": "1h"}]), 4, settings)
        try:
            token = create_credential(cluster, "bot-pat", "bot", "access-token")
            statuses = await _burst(cluster, token, 200)
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
        assert statuses.count(200) == 50 and statuses.count(429) == 150, sorted(set(statuses))
        assert len(fake[0].requests) == 50
    finally:
        redis.stop()


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_redis_stopped_mid_run(tmp_path: Path, fake: Any, fail_mode: str) -> None:
    redis = RedisServer()
    redis.start()
    settings = f'[usage]\nredis = "{redis.url}"\nredis_timeout = 0.3\n'
    docs = _docs(fake[1], [{"requests": 1000, "window": "1h"}], fail_mode)
    cluster = await _cluster(tmp_path, fake[1], docs, 1, settings)
    try:
        token = create_credential(cluster, "bot-pat", "bot", "access-token")
        assert await _burst(cluster, token, 5) == [200] * 5
        redis.stop()
        statuses = await _burst(cluster, token, 5)
        if fail_mode == "closed":
            assert statuses == [503] * 5
            refused = [e for e in _log(cluster) if e.get("status") == 503]
            assert refused[-1]["quota"]["outcome"] == "unavailable" and "Redis" in refused[-1]["reason"]
        else:
            assert statuses == [200] * 5
            async with (
                aiohttp.ClientSession() as session,
                session.get(cluster.url + "/metrics", ssl=cluster.ssl_context()) as r,
            ):
                metrics = await r.text()
            misses = [
                line
                for line in metrics.splitlines()
                if line.startswith("wardgate_quota_decisions_total{") and 'outcome="fail-open"' in line
            ]
            assert len(misses) == 1 and 'quota="dev-limits"' in misses[0] and misses[0].endswith(" 5.0"), misses
    finally:
        await asyncio.to_thread(stop_cluster, cluster)
        redis.stop()
