"""Plugins end to end: the seed's safe-gemini Lua script, unchanged, through the real cluster process.

The script's guardrail and semantic-cache services are small aiohttp fakes on loopback; the manifests
are pointed at them (script URLs and the plugin's allowedBaseURLs), as the provider URLs are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from tests.cluster.plugins.test_extproc import Processor
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

pytestmark = pytest.mark.usefixtures("loopback_names")
CACHED_ANSWER = {"id": "cache-1", "object": "chat.completion", "choices": [{"message": {"content": "from cache"}}]}


class Sidecars:
    """The guardrail (denies messages containing 'forbidden') and the semantic cache (hits on 'cached')."""

    def __init__(self) -> None:
        self.guard_seen: list[Any] = []
        self.cache_seen: list[Any] = []
        self.guard_status = 200

    async def check(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.guard_seen.append(body)
        allowed = not any("forbidden" in str(m.get("content")) for m in body["messages"])
        return web.json_response({"allowed": allowed}, status=self.guard_status)

    async def lookup(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.cache_seen.append(body)
        if any("cached" in str(m.get("content")) for m in body["messages"]):
            return web.json_response(CACHED_ANSWER)
        return web.json_response({"hit": False}, status=404)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def rewritten(docs: list[dict[str, Any]], replace: dict[str, str]) -> list[dict[str, Any]]:
    text = yaml.safe_dump_all(docs)
    for old, new in replace.items():
        text = text.replace(old, new)
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Sidecars]]:
    sidecars = Sidecars()
    guard_app, cache_app = web.Application(), web.Application()
    guard_app.router.add_post("/v1/check", sidecars.check)
    cache_app.router.add_post("/v1/lookup", sidecars.lookup)
    gemini, openai_fake, deepseek = (FakeOpenAI(api_key=k) for k in (GEMINI_KEY, OPENAI_KEY, DEEPSEEK_KEY))
    async with (
        gemini.serve() as g_url,
        openai_fake.serve() as o_url,
        deepseek.serve() as d_url,
        serve(guard_app) as guard_url,
        serve(cache_app) as cache_url,
    ):
        fakes = {"gemini": (gemini, g_url), "openai": (openai_fake, o_url), "deepseek": (deepseek, d_url)}
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home")
        try:
            docs = pointed_at_fakes({k: v[1] for k, v in fakes.items()})
            docs = rewritten(
                docs, {"http://guardrail.internal": guard_url, "http://semantic-cache.internal": cache_url}
            )
            apply_docs(cluster, docs, tmp_path)
            cluster.ctl("create", "secret", "gemini-api-key", "--value", GEMINI_KEY, check=True)
            gw = Gateway(cluster, fakes)
            gw.client_secrets["alice"] = create_credential(cluster, "alice-pat", "alice", "access-token")
            yield gw, sidecars
        finally:
            await asyncio.to_thread(stop_cluster, cluster)


async def chat(gw: Gateway, body: dict[str, Any], service: str = "safe-gemini") -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.cluster.public_url(service) + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {gw.client_secrets['alice']}"},
            ssl=gw.ssl_context(),
        ) as r,
    ):
        raw = await r.read()
        parsed = json.loads(raw) if raw and r.content_type == "application/json" else raw
        return r.status, {k.lower(): v for k, v in r.headers.items()}, parsed


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def test_clamps_temperature_swaps_model_and_puts_the_system_message_first(
    env: tuple[Gateway, Sidecars],
) -> None:
    gw, sidecars = env
    status, _, reply = await chat(gw, {"model": "gemini-2.5-pro", "temperature": 0.9, "messages": [user("hi")]})
    assert status == 200, reply
    seen = gw.fakes["gemini"][0].requests[-1].json
    assert seen["model"] == "gemini-2.5-flash"
    assert seen["temperature"] == 0.7
    assert seen["messages"][0]["role"] == "system"
    assert seen["messages"][0]["content"] == "You are a helpful assistant. Never reveal secrets."
    assert seen["messages"][1:] == [user("hi")]
    assert [m["role"] for m in sidecars.guard_seen[-1]["messages"]] == ["system", "user"]
    entry = await gw.last_log(service="safe-gemini", status=200)
    assert entry["model"] == "gemini-2.5-pro" and entry["upstreamModel"] == "gemini-2.5-flash"
    assert entry["plugins"] == ["safety"] and "answeredBy" not in entry


async def test_low_temperature_and_other_models_pass_unchanged(env: tuple[Gateway, Sidecars]) -> None:
    gw, _ = env
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "temperature": 0.2, "messages": [user("hi")]})
    assert status == 200
    seen = gw.fakes["gemini"][0].requests[-1].json
    assert seen["model"] == "gemini-2.5-flash" and seen["temperature"] == 0.2


async def test_more_than_four_messages_is_400_without_the_upstream(env: tuple[Gateway, Sidecars]) -> None:
    gw, sidecars = env
    before = len(gw.fakes["gemini"][0].requests)
    status, _, reply = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user(str(i)) for i in range(5)]})
    assert status == 400
    assert reply["error"]["code"] == "plugin_rejected"
    assert len(gw.fakes["gemini"][0].requests) == before and sidecars.guard_seen == []
    entry = await gw.last_log(service="safe-gemini", status=400)
    assert entry["answeredBy"] == "safety"
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user(str(i)) for i in range(4)]})
    assert status == 200


async def test_long_messages_are_counted_in_characters_not_bytes(env: tuple[Gateway, Sidecars]) -> None:
    gw, _ = env
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("é" * 2000)]})
    assert status == 200
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("é" * 2001)]})
    assert status == 400


async def test_guardrail_denies_and_a_broken_guardrail_is_503(env: tuple[Gateway, Sidecars]) -> None:
    gw, sidecars = env
    before = len(gw.fakes["gemini"][0].requests)
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("a forbidden thing")]})
    assert status == 403
    sidecars.guard_status = 500
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("hello")]})
    assert status == 503
    assert len(gw.fakes["gemini"][0].requests) == before


async def test_semantic_cache_hit_answers_without_the_upstream(env: tuple[Gateway, Sidecars]) -> None:
    gw, sidecars = env
    before = len(gw.fakes["gemini"][0].requests)
    status, headers, reply = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("cached question")]})
    assert status == 200 and reply == CACHED_ANSWER
    assert headers["content-type"].startswith("application/json")
    assert "x-request-id" in headers
    assert len(gw.fakes["gemini"][0].requests) == before
    assert sidecars.cache_seen[-1]["messages"][0]["role"] == "system"
    entry = await gw.last_log(service="safe-gemini", status=200, answeredBy="safety")
    assert entry["bytesOut"] == len(json.dumps(CACHED_ANSWER))  # the cache's bytes, as it sent them


async def test_a_script_error_fails_closed_and_the_next_request_works(env: tuple[Gateway, Sidecars]) -> None:
    gw, _ = env
    status, _, reply = await chat(gw, {"model": "gemini-2.5-flash"})
    assert status == 500 and reply["error"]["code"] == "plugin_failed"
    assert "safety" not in json.dumps(reply)
    entry = await gw.last_log(service="safe-gemini", status=500)
    assert "plugin 'safety' failed in request" in entry["reason"] and "line" in entry["reason"]
    status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("hi")]})
    assert status == 200


async def test_http_client_outside_the_allow_list_fails_closed(env: tuple[Gateway, Sidecars], tmp_path: Path) -> None:
    gw, _ = env
    script = """
function onRequest(ctx)
  local c = http.client()
  c:setBaseURL("http://127.0.0.1:1")
  local resp, err = c:request():get("/")
end
"""
    apply_docs(gw.cluster, [plugin_service("escape", [{"name": "escape", "lua": {"inline": script}}], gw)], tmp_path)
    status, _, _ = await chat(gw, {"messages": []}, service="escape")
    assert status == 500
    entry = await gw.last_log(service="escape", status=500)
    assert "not in this plugin's allowedBaseURLs" in entry["reason"]


def plugin_service(name: str, plugins: list[dict[str, Any]], gw: Gateway) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "isPublic": True,
            "config": {
                "upstream": {"url": gw.fakes["gemini"][1]},
                "http": {
                    "path": {"addPrefix": "/v1beta/openai"},
                    "auth": {"bearer": {"fromSecret": "gemini-api-key"}},
                    "plugins": plugins,
                },
            },
            "authorization": {
                "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]
            },
        },
    }


async def test_lua_syntax_errors_are_rejected_at_apply_with_the_line(
    env: tuple[Gateway, Sidecars], tmp_path: Path
) -> None:
    gw, _ = env
    broken = "function onRequest(ctx)\n  local x = = 1\nend\n"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(plugin_service("broken", [{"name": "bad", "lua": {"inline": broken}}], gw)))
    result = gw.cluster.ctl("apply", "-f", str(path))
    assert result.returncode != 0
    assert "line 2" in result.stdout + result.stderr and "plugins[0] (bad)" in result.stdout + result.stderr


async def test_chain_order_answers_response_hooks_and_conditions(env: tuple[Gateway, Sidecars], tmp_path: Path) -> None:
    gw, _ = env
    tag = """
function onRequest(ctx)
  octelium.req.setRequestHeader("x-order", (octelium.req.getRequestHeader("x-order") or "") .. "a")
  octelium.req.setResponseHeader("x-seen-by", "tagger")
end
function onResponse(ctx)
  local body = json.decode(octelium.resp.getResponseBody())
  body.tagged = octelium.resp.getResponseCode()
  octelium.resp.setResponseBody(json.encode(body))
end
"""
    plugins = [
        {"name": "tagger", "lua": {"inline": tag}},
        {"name": "headers", "headers": {"setResponseHeaders": [{"name": "x-chain", "value": "ran"}]}},
        {
            "name": "maintenance",
            "condition": {"match": 'ctx.request.http.path.startsWith("/v1/models")'},
            "directResponse": {"statusCode": 503, "body": '{"down":true}', "contentType": "application/json"},
        },
    ]
    apply_docs(gw.cluster, [plugin_service("chain", plugins, gw)], tmp_path)
    status, headers, reply = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("hi")]}, "chain")
    assert status == 200 and reply["tagged"] == 200
    assert headers["x-seen-by"] == "tagger" and headers["x-chain"] == "ran"
    assert gw.fakes["gemini"][0].requests[-1].headers["x-order"] == "a"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gw.cluster.public_url("chain") + "/v1/models",
            headers={"Authorization": f"Bearer {gw.client_secrets['alice']}"},
            ssl=gw.ssl_context(),
        ) as r,
    ):
        assert r.status == 503 and await r.json() == {"down": True, "tagged": 503}
        assert r.headers["x-chain"] == "ran" and r.headers["x-seen-by"] == "tagger"
    entry = await gw.last_log(service="chain", status=503)
    assert entry["answeredBy"] == "maintenance"


async def test_extproc_through_the_gateway(env: tuple[Gateway, Sidecars], tmp_path: Path) -> None:
    gw, _ = env
    server = grpc.aio.server()
    processor = Processor()
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        plugins = [{"name": "proc", "extProc": {"address": f"127.0.0.1:{port}", "timeout": "1s"}}]
        apply_docs(gw.cluster, [plugin_service("proc", plugins, gw)], tmp_path)
        status, _, _ = await chat(gw, {"model": "gemini-2.5-flash", "messages": [user("hi")]}, "proc")
        seen = gw.fakes["gemini"][0].requests[-1]
        assert status == 404 and seen.path == "/v1beta/openai/v2/rewritten"  # the processor rewrote :path
        assert seen.headers["x-added"] == "1" and seen.body == b'{"replaced":true}'
        processor.mode = "immediate"
        status, _, _ = await chat(gw, {"messages": []}, "proc")
        assert status == 403
        processor.mode = "hang"
        status, _, reply = await chat(gw, {"messages": []}, "proc")
        assert status == 500 and reply["error"]["code"] == "plugin_failed"
        entry = await gw.last_log(service="proc", status=500)
        assert "did not answer within 1s" in entry["reason"]
    finally:
        await server.stop(grace=None)
