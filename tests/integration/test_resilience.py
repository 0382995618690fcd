"""Retries, fallbacks, endpoints and health against the real cluster process and failing fake providers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import GEMINI_KEY, OPENAI_KEY, Gateway, apply_docs, raw, sdk
from tests.integration.resilience_env import (
    GOOG_KEY,
    Providers,
    closed_url,
    serve_in_thread,
    service,
    start,
)

pytestmark = pytest.mark.usefixtures("loopback_names")
CHAT: dict[str, Any] = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hello there"}]}
FAST = {"backoff": "10ms", "maxBackoff": "50ms"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Providers]]:
    from tests.conftest import stop_cluster

    fakes = {
        "gemini": FakeOpenAI(api_key=GEMINI_KEY, name="gemini"),
        "openai": FakeOpenAI(api_key=OPENAI_KEY, name="openai"),
        "deepseek": FakeOpenAI(name="deepseek"),
        "goog": FakeOpenAI(api_key=GOOG_KEY, api_key_header="x-goog-api-key", name="goog"),
        "r1": FakeOpenAI(name="r1"),
        "r2": FakeOpenAI(name="r2"),
    }
    with serve_in_thread(fakes) as served:
        tmp = tmp_path_factory.mktemp("resilience")
        gw, cluster = start(tmp, served)
        providers = Providers(served, closed_url())
        urls = {k: v[1] for k, v in served.items()}
        openai_cfg = {
            "name": "openai",
            "upstream": {"url": urls["openai"]},
            "http": {"auth": {"bearer": {"fromSecret": "openai-api-key"}}},
        }
        docs = [
            service(
                "retrying",
                {
                    "upstream": {"url": urls["r1"]},
                    "retry": {"attempts": 3, **FAST, "on": [429, "5xx", "connect", "reset"]},
                    "attemptsHeader": True,
                },
            ),
            service(
                "keys",
                {
                    "upstream": {"url": urls["goog"]},
                    "http": {"auth": {"custom": {"header": "x-goog-api-key", "fromSecret": "goog-api-key"}}},
                    "fallbacks": [{"configName": "openai", "model": "gpt-4o-mini"}],
                    "attemptsHeader": True,
                },
                [openai_cfg],
            ),
            service(
                "unreachable",
                {"upstream": {"url": providers.closed_url}, "fallbacks": [{"configName": "openai"}]},
                [openai_cfg],
            ),
            service(
                "silent",
                {
                    "upstream": {"url": urls["r1"]},
                    "firstTokenTimeout": "300ms",
                    "fallbacks": [{"configName": "second"}],
                },
                [{"name": "second", "upstream": {"url": urls["r2"]}}],
            ),
            service(
                "deadline",
                {
                    "upstream": {"url": urls["r1"]},
                    "retry": {"attempts": 3, "on": ["timeout"], **FAST, "timeout": "1s", "maxRetryAfter": "500ms"},
                },
            ),
            service(
                "replicas",
                {
                    "upstream": {
                        "endpoints": [{"url": urls["r1"], "weight": 3}, {"url": urls["r2"]}],
                        "health": {"failures": 2, "cooldown": "30s"},
                    },
                    "retry": {"attempts": 2, "on": ["connect", "reset", "5xx"], **FAST},
                },
            ),
            service(
                "plugged",
                {"upstream": {"url": urls["r1"]}, "fallbacks": [{"configName": "tagged", "model": "fake-model"}]},
                [
                    {
                        "name": "tagged",
                        "upstream": {"url": urls["r2"]},
                        "http": {"plugins": [{"name": "tag", "lua": {"inline": TAGGER}}]},
                    }
                ],
            ),
        ]
        apply_docs(cluster, docs, tmp)
        try:
            yield gw, providers
        finally:
            stop_cluster(cluster)


TAGGER = """
function onRequest(ctx)
  wardgate.req.setRequestHeader("x-tagged", "yes")
end
function onResponse(ctx)
  wardgate.resp.setResponseHeader("x-tagged-answer", "yes")
end
"""


@pytest.fixture
async def gw(env: tuple[Gateway, Providers]) -> AsyncIterator[Gateway]:
    gateway, providers = env
    providers.reset()
    yield gateway
    providers.reset()
    for client in gateway.sdk_clients:
        await client.close()
    gateway.sdk_clients.clear()


def fake(gw: Gateway, name: str) -> FakeOpenAI:
    return gw.fakes[name][0]


async def post(
    gw: Gateway, service_name: str, body: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None
) -> Any:
    sent = {"Authorization": f"Bearer {gw.client_secrets['alice-pat']}", **(headers or {})}
    return await raw(gw, "POST", service_name, "/v1/chat/completions", json=body or CHAT, headers=sent)


async def test_openai_sdk_stream_falls_back_from_gemini_to_openai_before_the_first_byte(gw: Gateway) -> None:
    fake(gw, "gemini").fail_next(None, status=503)
    client = sdk(gw, "total-ai", gw.client_secrets["alice-pat"])
    stream = await client.chat.completions.create(
        **{**CHAT, "messages": [{"role": "user", "content": "one two three"}]},
        stream=True,
        stream_options={"include_usage": True},
    )
    words = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(words) == "echo: one two three"
    seen = fake(gw, "openai").requests[-1]
    assert seen.json["model"] == "gpt-4o-mini" and seen.json["stream"] is True
    assert seen.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert GEMINI_KEY not in json.dumps(dict(seen.headers))
    entry = await gw.last_log(service="total-ai", upstreamModel="gpt-4o-mini")
    assert [(a["config"], a.get("status"), a["reason"]) for a in entry["attempts"]] == [
        ("default", 503, "status 503"),
        ("default", 503, "status 503"),
        ("openai", 200, "answered"),
    ]
    assert entry["status"] == 200 and entry["upstreamModel"] == "gpt-4o-mini"
    assert entry["usage"]["completion_tokens"] == 4


async def test_total_ai_falls_through_to_deepseek_with_its_model(gw: Gateway) -> None:
    fake(gw, "gemini").fail_next(None, status=500)
    fake(gw, "openai").fail_next(None, status=429, retry_after=60)
    status, headers, body = await post(gw, "total-ai")
    assert status == 200 and json.loads(body)["model"] == "deepseek-chat"
    entry = await gw.last_log(requestId=headers["x-request-id"])
    assert [a["config"] for a in entry["attempts"]] == ["default", "default", "openai", "deepseek"]
    assert len(fake(gw, "gemini").requests) == 2  # its retry.attempts; OpenAI's config has no retry
    assert len(fake(gw, "openai").requests) == 1


async def test_retry_on_503_then_answer_with_the_attempts_header(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(2, status=503)
    status, headers, _ = await post(gw, "retrying")
    assert status == 200
    assert headers["x-wardgate-attempts"] == "default=503, default=503, default=200"
    assert len(fake(gw, "r1").requests) == 3


async def test_retry_after_is_honoured(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(1, status=429, retry_after=1)
    started = time.monotonic()
    status, headers, _ = await post(gw, "retrying")
    assert status == 200 and time.monotonic() - started >= 1.0
    entry = await gw.last_log(requestId=headers["x-request-id"])
    assert entry["attempts"][0]["reason"] == "status 429"


async def test_retry_after_over_the_cap_is_not_waited_for(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(1, status=429, retry_after=30)
    started = time.monotonic()
    status, headers, body = await post(gw, "retrying")
    assert status == 429 and headers["retry-after"] == "30" and time.monotonic() - started < 5
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert len(fake(gw, "r1").requests) == 1


async def test_a_failure_not_listed_is_relayed_at_once(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(None, status=400)
    status, headers, _ = await post(gw, "retrying")
    assert status == 400 and headers["x-wardgate-attempts"] == "default=400"
    assert len(fake(gw, "r1").requests) == 1


async def test_a_reset_before_the_answer_is_retried(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(1, reset=True)
    status, headers, _ = await post(gw, "retrying")
    assert status == 200 and headers["x-wardgate-attempts"] == "default=reset, default=200"


async def test_every_try_failing_ends_with_the_last_answer(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(None, status=502)
    status, headers, _ = await post(gw, "retrying")
    assert status == 502 and headers["x-wardgate-attempts"] == "default=502, default=502, default=502"


async def test_a_stream_cut_after_its_first_byte_is_never_retried(gw: Gateway) -> None:
    key = gw.client_secrets["alice-pat"]
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw(
            gw,
            "POST",
            "retrying",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {key}", "x-fake-fail-after-chunks": "2"},
        )
    assert len(fake(gw, "r1").requests) == 1


async def test_a_fallback_never_sees_the_primary_key(gw: Gateway) -> None:
    fake(gw, "goog").fail_next(1, status=503)
    status, headers, body = await post(gw, "keys", headers={"x-goog-api-key": "client-sent"})
    assert status == 200 and headers["x-wardgate-attempts"] == "default=503, openai=200"
    primary = fake(gw, "goog").requests[-1]
    assert primary.headers["x-goog-api-key"] == GOOG_KEY
    seen = fake(gw, "openai").requests[-1]
    assert seen.headers["x-goog-api-key"] == "client-sent"  # the client's own header, not the primary's key
    assert GOOG_KEY not in json.dumps(dict(seen.headers)) and GOOG_KEY not in seen.body.decode()
    assert seen.headers["Authorization"] == f"Bearer {OPENAI_KEY}" and seen.json["model"] == "gpt-4o-mini"
    assert json.loads(body)["model"] == "gpt-4o-mini"


async def test_connect_error_falls_back(gw: Gateway) -> None:
    status, headers, body = await post(gw, "unreachable")
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "echo: hello there"
    entry = await gw.last_log(requestId=headers["x-request-id"])
    assert [a["reason"] for a in entry["attempts"]] == ["connect", "answered"]


async def test_a_silent_stream_falls_back_after_the_first_token_timeout(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(None, silent_stream=True)
    started = time.monotonic()
    status, headers, body = await post(gw, "silent", {**CHAT, "stream": True})
    assert status == 200 and b"[DONE]" in body and b"echo" in body
    assert 0.3 <= time.monotonic() - started < 5
    entry = await gw.last_log(requestId=headers["x-request-id"])
    assert [(a["config"], a["reason"]) for a in entry["attempts"]] == [
        ("default", "first token timeout"),
        ("second", "answered"),
    ]


async def test_the_deadline_bounds_all_tries(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(None, latency=5.0)
    started = time.monotonic()
    status, _, body = await post(gw, "deadline")
    assert status == 504 and time.monotonic() - started < 3
    assert json.loads(body)["error"]["code"] == "upstream_timeout"


async def test_weighted_round_robin_then_ejection_of_a_failing_endpoint(gw: Gateway) -> None:
    for _ in range(8):
        assert (await post(gw, "replicas"))[0] == 200
    assert (len(fake(gw, "r1").requests), len(fake(gw, "r2").requests)) == (6, 2)
    fake(gw, "r1").fail_next(None, reset=True)
    for _ in range(6):
        assert (await post(gw, "replicas"))[0] == 200
    assert len(fake(gw, "r1").requests) == 8  # two failures in a row, then left out for the cool-down
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.cluster.url + "/metrics", ssl=gw.cluster.ssl_context()) as r,
    ):
        metrics = await r.text()
    r1, r2 = gw.fakes["r1"][1], gw.fakes["r2"][1]
    node = socket.gethostname()
    assert f'wardgate_upstream_endpoint_up{{endpoint="{r1}",node="{node}"}} 0.0' in metrics
    assert f'wardgate_upstream_endpoint_up{{endpoint="{r2}",node="{node}"}} 1.0' in metrics
    assert f'wardgate_upstream_endpoint_ejections_total{{endpoint="{r1}",node="{node}"}} 1.0' in metrics


async def test_a_fallback_runs_its_own_plugins_both_phases(gw: Gateway) -> None:
    fake(gw, "r1").fail_next(1, status=503)
    status, headers, _ = await post(gw, "plugged")
    assert status == 200 and headers["x-tagged-answer"] == "yes"
    assert "x-tagged" not in fake(gw, "r1").requests[-1].headers
    seen = fake(gw, "r2").requests[-1]
    assert seen.headers["x-tagged"] == "yes" and seen.json["model"] == "fake-model"


async def test_without_failures_one_try_is_logged(gw: Gateway) -> None:
    status, headers, _ = await post(gw, "total-ai")
    assert status == 200 and "x-wardgate-attempts" not in headers
    entry = await gw.last_log(requestId=headers["x-request-id"])
    assert [(a["config"], a["reason"]) for a in entry["attempts"]] == [("default", "answered")]


async def _raw_upstream(body: bytes, announced: int) -> tuple[asyncio.Server, str]:
    """An upstream that answers every request with `announced` as Content-Length and `body`, then closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % announced
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut short"])
async def test_a_small_answer_is_relayed_whole_or_the_client_is_cut_off(gw: Gateway, tmp_path: Path, cut: bool) -> None:
    # Small answers of known length are read whole and sent in one write: an upstream that closes before its
    # Content-Length must not turn into a short 200 that the client takes for the whole answer.
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": [], "pad": "y" * 3000}).encode()
    server, url = await _raw_upstream(body[: len(body) // 2] if cut else body, len(body))
    async with server:
        name = "short" if cut else "exact"
        apply_docs(gw.cluster, [service(name, {"upstream": {"url": url}})], tmp_path)
        if cut:
            # Nothing was sent yet: the client sees its connection closed, never a 200.
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
                await post(gw, name)
            entry = await gw.last_log(service=name)
            assert entry["error"].startswith("upstream failed mid-stream")
        else:
            status, headers, answer = await post(gw, name)
            assert status == 200 and answer == body and int(headers["content-length"]) == len(body)
