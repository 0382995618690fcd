"""Integration fixtures: a gateway (the real cluster process) in front of three fake providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import (
    DEEPSEEK_KEY,
    GEMINI_KEY,
    OPENAI_KEY,
    Gateway,
    apply_docs,
    create_credential,
    pointed_at_fakes,
)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    gemini, openai_fake, deepseek = (FakeOpenAI(api_key=k) for k in (GEMINI_KEY, OPENAI_KEY, DEEPSEEK_KEY))
    async with gemini.serve() as g_url, openai_fake.serve() as o_url, deepseek.serve() as d_url:
        fakes = {"gemini": (gemini, g_url), "openai": (openai_fake, o_url), "deepseek": (deepseek, d_url)}
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home")
        try:
            apply_docs(cluster, pointed_at_fakes({k: v[1] for k, v in fakes.items()}), tmp_path)
            for name, value in (
                ("gemini-api-key", GEMINI_KEY),
                ("openai-api-key", OPENAI_KEY),
                ("deepseek-api-key", DEEPSEEK_KEY),
            ):
                cluster.ctl("create", "secret", name, "--value", value, check=True)
            env = Gateway(cluster, fakes)
            env.client_secrets["alice"] = create_credential(cluster, "alice-oauth", "alice", "oauth2")
            env.client_secrets["bob"] = create_credential(cluster, "bob-oauth", "bob", "oauth2")
            env.client_secrets["alice-pat"] = create_credential(cluster, "alice-pat", "alice", "access-token")
            yield env
            for client in env.sdk_clients:
                await client.close()
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
