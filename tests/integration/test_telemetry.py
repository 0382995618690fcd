"""Telemetry through the real gateway: spans and log records at a real OTLP receiver, trace context
propagated upstream, Prometheus metrics, and a collector that is down."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.otlp_receiver import Received, attributes, serve_grpc, serve_http
from tests.integration.gateway_env import (
    GEMINI_KEY,
    Gateway,
    apply_docs,
    create_credential,
    fetch_token,
    pointed_at_fakes,
    raw,
)

pytestmark = pytest.mark.usefixtures("loopback_names")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "count the tokens please"}]}


async def _gateway(tmp_path: Path, settings: str, fake: FakeOpenAI, url: str) -> Gateway:
    cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", "wardgate.test", settings)
    docs = [
        d
        for d in pointed_at_fakes({"gemini": url, "openai": url, "deepseek": url})
        if d["kind"] in ("Group", "User") or d["metadata"]["name"] == "gemini"
    ]
    gemini = next(d for d in docs if d["kind"] == "Service")
    gemini["spec"]["config"]["http"]["plugins"] = [
        {"name": "tag", "headers": {"setRequestHeaders": [{"name": "x-tag", "value": "1"}]}}
    ]
    apply_docs(cluster, docs, tmp_path)
    cluster.ctl("create", "secret", "gemini-api-key", "--value", GEMINI_KEY, check=True)
    env = Gateway(cluster, {"gemini": (fake, url)})
    env.client_secrets["alice"] = create_credential(cluster, "alice-oauth", "alice", "oauth2")
    return env


@pytest.fixture
async def provider() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(api_key=GEMINI_KEY)
    async with fake.serve() as url:
        yield fake, url


def _metrics(gw: Gateway) -> str:
    with urllib.request.urlopen(gw.cluster.url + "/metrics", context=gw.cluster.ssl_context(), timeout=10) as r:
        return str(r.read().decode())


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_logs_and_metrics(tmp_path: Path, provider: tuple[FakeOpenAI, str], protocol: str) -> None:
    received = Received()
    serve = serve_http if protocol == "http/protobuf" else serve_grpc
    async with serve(received) as endpoint:
        settings = f'[telemetry]\notlp_endpoint = "{endpoint}"\nprotocol = "{protocol}"\ninterval = 0.2\n'
        gw = await _gateway(tmp_path, settings, *provider)
        try:
            token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
            incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            status, headers, _ = await raw(
                gw,
                "POST",
                "gemini",
                "/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {token}", "traceparent": incoming},
            )
            assert status == 200
            for _ in range(100):
                if any(s.kind == 2 for s in received.spans) and received.logs:
                    break
                await asyncio.sleep(0.05)
            metrics = _metrics(gw)
        finally:
            await asyncio.to_thread(stop_cluster, gw.cluster)
    server = next(s for s in received.spans if s.kind == 2)
    attrs = attributes(server.attributes)
    assert attrs["wardgate.user"] == "alice" and attrs["wardgate.service"] == "gemini"
    assert attrs["wardgate.session_type"] == "CLIENTLESS" and attrs["wardgate.decision.effect"] == "ALLOW"
    assert attrs["gen_ai.request.model"] == "gpt-4o" and attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert server.trace_id.hex() != "4bf92f3577b34da6a3ce929d0e0e4736", "traceparent trusted without being enabled"
    children = {s.name: s for s in received.spans if s.parent_span_id == server.span_id}
    assert {"authorize", "upstream default", "plugin tag request"} <= set(children)
    assert attributes(children["plugin tag request"].attributes)["wardgate.plugin"] == "tag"
    seen = provider[0].requests[-1].headers["traceparent"]
    assert seen == f"00-{server.trace_id.hex()}-{children['upstream default'].span_id.hex()}-01"
    record = received.logs[-1]
    assert record.event_name == "wardgate.access" and record.trace_id == server.trace_id
    assert attributes(record.attributes)["requestId"] == headers["x-request-id"]
    assert GEMINI_KEY not in str(received.spans) + str(received.logs)
    node = socket.gethostname()
    labels = f'decision="ALLOW",listener="public",node="{node}",service="gemini",status="200"'
    assert f"wardgate_requests_total{{{labels}}} 1.0" in metrics
    labels = f'direction="input",model="gpt-4o",node="{node}",service="gemini",user="alice"'
    assert f"wardgate_llm_tokens_total{{{labels}}} 7.0" in metrics
    assert f'wardgate_active_sessions{{node="{node}",type="CLIENTLESS"}} 1.0' in metrics
    assert "wardgate_request_duration_seconds_bucket" in metrics


async def test_collector_down_keeps_requests_fast_and_counts_drops(
    tmp_path: Path, provider: tuple[FakeOpenAI, str]
) -> None:
    settings = f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{free_port()}"\ninterval = 0.1\ntimeout = 0.5\n'
    gw = await _gateway(tmp_path, settings, *provider)
    try:
        token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
        started = time.perf_counter()
        for _ in range(20):
            status, _, _ = await raw(
                gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"}
            )
            assert status == 200
        elapsed = time.perf_counter() - started
        assert elapsed < 10, elapsed
        dropped = 0.0
        for _ in range(50):
            line = next(
                (
                    x
                    for x in _metrics(gw).splitlines()
                    if x.startswith("wardgate_telemetry_dropped_total{") and 'signal="logs"' in x
                ),
                None,
            )
            dropped = float(line.split()[-1]) if line else 0.0
            if dropped >= 20:
                break
            await asyncio.sleep(0.1)
        assert dropped >= 20
    finally:
        await asyncio.to_thread(stop_cluster, gw.cluster)
