"""Every worker of a node agrees before a write is acknowledged (`run --workers N`, real processes, real TLS).

The two measurements that failed before the worker board: right after a credential is created, token
requests on new connections (spread over the workers by SO_REUSEPORT) must all succeed; right after it is
deleted, requests with its access token on new connections must all be refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs

pytestmark = pytest.mark.usefixtures("loopback_names")

KEY = "sk-workers-upstream"
ROUNDS = 50
TOKEN_CALLS = 10
STALE_CHECKS = 40


def _docs(upstream: str) -> list[dict[str, Any]]:
    return [
        {"kind": "User", "metadata": {"name": "bot"}, "spec": {"type": "WORKLOAD"}},
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {
                "isPublic": True,
                "config": {
                    "upstream": {"url": upstream},
                    "http": {"auth": {"bearer": {"fromSecret": "upstream-key"}}},
                },
                "authorization": {
                    "inlinePolicies": [
                        {
                            "spec": {
                                "rules": [
                                    {"effect": "ALLOW", "condition": {"match": 'ctx.user.metadata.name == "bot"'}}
                                ]
                            }
                        }
                    ]
                },
            },
        },
    ]


async def _status(
    cluster: RunningCluster, ssl: Any, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any] | None]:
    # A new connection per call: SO_REUSEPORT spreads them over the workers.
    connector = aiohttp.TCPConnector(force_close=True, ssl=ssl)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        return r.status, body


@pytest.mark.parametrize("workers", [2, 4])
async def test_a_write_is_enforced_by_every_worker_when_acknowledged(tmp_path: Path, workers: int) -> None:
    fake = FakeOpenAI(api_key=KEY)
    async with fake.serve() as upstream:
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", workers=workers)
        try:
            apply_docs(cluster, _docs(upstream), tmp_path)
            cluster.ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
            await _check_rounds(cluster)
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
    log = cluster.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


async def _check_rounds(cluster: RunningCluster) -> None:
    import ssl as ssl_module

    ssl = ssl_module.create_default_context(cafile=str(cluster.home / "ca.crt"))
    admin = {"Authorization": f"Bearer {cluster.token}"}
    token_url = cluster.public_url() + "/oauth2/token"
    chat = cluster.public_url("llm") + "/v1/chat/completions"
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    refused_new = stale = 0
    for round_ in range(ROUNDS):
        name = f"cred-{round_}"
        status, created = await _status(
            cluster, ssl, "POST", cluster.url + "/api/v1/credentials",
            json={"name": name, "user": "bot", "type": "oauth2"}, headers=admin,
        )  # fmt: skip
        assert status == 200 and created is not None, (status, created)
        form = {
            "grant_type": "client_credentials",
            "client_id": created["clientId"],
            "client_secret": created["clientSecret"],
        }
        token = None
        for _ in range(TOKEN_CALLS):
            status, body = await _status(cluster, ssl, "POST", token_url, data=form)
            if status != 200 or body is None:
                refused_new += 1
            else:
                token = body["access_token"]
        assert token is not None
        status, _ = await _status(
            cluster, ssl, "POST", chat, json=request, headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200
        status, _ = await _status(cluster, ssl, "DELETE", cluster.url + f"/api/v1/credentials/{name}", headers=admin)
        assert status == 200
        for _ in range(STALE_CHECKS):
            status, _ = await _status(
                cluster, ssl, "POST", chat, json=request, headers={"Authorization": f"Bearer {token}"}
            )
            if status != 401:
                stale += 1
    assert (refused_new, stale) == (0, 0), f"{refused_new} fresh-credential refusals, {stale} stale acceptances"
