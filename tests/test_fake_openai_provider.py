"""The fake OpenAI provider behaves like OpenAI for the official SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.openai_provider import (
    DEFAULT_MODELS,
    FakeOpenAI,
    serve_fake_openai,
)
from tests.fakes.provider_process import fake_process

API_KEY = "sk-fake-upstream-secret"
ROOT = Path(__file__).resolve().parents[1]
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    async with serve_fake_openai(api_key=API_KEY) as pair:
        yield pair


@pytest.fixture
def fake(served: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    return served[0]


@pytest.fixture
def base_url(served: tuple[FakeOpenAI, str]) -> str:
    return served[1]


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def error(message: str, code: str | None = None, param: str | None = None) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


async def test_completion_echoes_the_last_user_message_with_word_usage(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "hello big world"},
        ],
    )

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo: hello big world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == (3 + 3) + (2 + 3) + (2 + 3) + (3 + 3)
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 26


async def test_completion_reads_text_parts_and_honours_max_tokens(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="fake-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at"},
                    {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
                    {"type": "text", "text": "this picture"},
                ],
            }
        ],
        max_tokens=3,
    )

    assert completion.choices[0].message.content == "echo: look at"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 + 3
    assert completion.usage.completion_tokens == 3


async def test_reply_is_cut_to_max_reply_chars() -> None:
    async with (
        serve_fake_openai(max_reply_chars=10) as (_, base_url),
        openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="any", max_retries=0) as sdk,
    ):
        completion = await sdk.chat.completions.create(model="m", messages=HELLO)

    assert completion.choices[0].message.content == "echo: hell"


async def test_a_fixed_reply_replaces_the_echo() -> None:
    async with (
        serve_fake_openai(reply="fixed  answer") as (_, base_url),
        openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="any", max_retries=0) as sdk,
    ):
        stream = await sdk.chat.completions.create(model="m", messages=HELLO, stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream]

    assert pieces == ["", "fixed", "  answer", None]


async def test_stream_sends_role_then_one_chunk_per_word_then_stop(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]

    assert [c.object for c in chunks] == ["chat.completion.chunk"] * 6
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {"fake-model"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks] == [
        "",
        "echo:",
        " one",
        " two",
        " three",
        None,
    ]
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["stop"]
    assert all(c.usage is None for c in chunks)


async def test_stream_with_include_usage_ends_with_a_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == 7
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }


async def test_raw_stream_is_server_sent_events_ending_with_done(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "m", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        text = await response.text()

    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert len(events) == 1 + 4 + 1 + 2
    assert all(event.startswith("data: {") for event in events[:-2])


async def test_sync_client_works_on_a_custom_prefix_with_a_custom_key_header() -> None:
    async with serve_fake_openai(api_key="g-key", api_key_header="x-goog-api-key") as (
        fake,
        base_url,
    ):

        def call(key: str) -> str | None:
            with openai.OpenAI(
                base_url=f"{base_url}/v1beta/openai",
                api_key="not-this-one",
                default_headers={"x-goog-api-key": key},
                max_retries=0,
            ) as sdk:
                completion = sdk.chat.completions.create(model="gemini-x", messages=HELLO)
                return completion.choices[0].message.content

        assert await asyncio.to_thread(call, "g-key") == "echo: hello big world"
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(call, "wrong")

    assert [r.path for r in fake.requests] == ["/v1beta/openai/chat/completions"] * 2
    assert fake.requests[0].headers["X-Goog-Api-Key"] == "g-key"


async def test_wrong_key_is_refused_with_401(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="m", messages=HELLO)

    assert caught.value.status_code == 401
    assert caught.value.response.json() == error("Incorrect API key provided.", code="invalid_api_key")


async def test_missing_key_is_refused_with_401(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/v1/models") as response:
        assert response.status == 401
        body = await response.json()

    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("You didn't provide an API key.")


async def test_rate_limit_model_answers_429(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="fake-rate-limit", messages=HELLO)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.json() == {
        "error": {
            "message": "Rate limit reached for fake-rate-limit on requests per min (RPM): Limit 1.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


@pytest.mark.parametrize(("model", "status"), [("fake-error-500", 500), ("fake-error-503", 503)])
async def test_error_models_answer_their_status(client: openai.AsyncOpenAI, model: str, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=model, messages=HELLO)

    assert caught.value.status_code == status
    assert caught.value.response.json() == {
        "error": {
            "message": f"Injected error {status} for {model}.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_fail_models_answer_500() -> None:
    async with (
        serve_fake_openai(fail_models={"broken"}) as (_, base_url),
        openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.embeddings.create(model="broken", input="text")
        working = await sdk.chat.completions.create(model="fine", messages=HELLO)

    assert caught.value.status_code == 500
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert working.choices[0].message.content == "echo: hello big world"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"model": "m", "messages": [',
            error("We could not parse the JSON body of your request. The OpenAI API expects a JSON payload."),
        ),
        (
            b"[1, 2]",
            error("We could not parse the JSON body of your request. The OpenAI API expects a JSON payload."),
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}]}',
            error("you must provide a model parameter", param="model"),
        ),
        (
            b'{"model": "m"}',
            error(
                "Missing required parameter: 'messages'.",
                code="missing_required_parameter",
                param="messages",
            ),
        ),
        (
            b'{"model": "m", "messages": []}',
            error(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                code="empty_array",
                param="messages",
            ),
        ),
    ],
)
async def test_bad_bodies_answer_400_in_the_openai_error_shape(
    base_url: str, http: aiohttp.ClientSession, body: bytes, expected: dict[str, object]
) -> None:
    async with http.post(
        f"{base_url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert await response.json() == expected


async def test_unknown_path_answers_404(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{base_url}/v1/completions/legacy", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as response:
        assert response.status == 404
        assert await response.json() == error("Invalid URL (POST /v1/completions/legacy)")


async def test_fail_after_chunks_cuts_the_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        extra_headers={"x-fake-fail-after-chunks": "2"},
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "echo:"]


async def test_fail_after_chunks_beyond_the_stream_still_withholds_done(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{base_url}/v1/chat/completions",
            json={"model": "m", "messages": HELLO, "stream": True},
            headers={
                "Authorization": f"Bearer {API_KEY}",
                "x-fake-fail-after-chunks": "100",
            },
        ) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(line.strip())

    assert len(events) == 6
    assert b'"finish_reason":"stop"' in events[-1]


async def test_fail_after_chunks_breaks_sync_streams_and_plain_completions() -> None:
    async with serve_fake_openai(fail_after_chunks=0) as (_, base_url):

        def stream_words() -> list[str | None]:
            with openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as sdk:
                stream = sdk.chat.completions.create(model="m", messages=HELLO, stream=True)
                return [c.choices[0].delta.content for c in stream]

        def complete() -> None:
            with openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as sdk:
                sdk.chat.completions.create(model="m", messages=HELLO)

        with pytest.raises(openai.APIConnectionError):
            await asyncio.to_thread(stream_words)
        with pytest.raises(openai.APIConnectionError):
            await asyncio.to_thread(complete)


async def test_latency_header_delays_the_answer(client: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    await client.chat.completions.create(
        model="m", messages=HELLO, extra_headers={"x-fake-latency-ms": "300"}
    )

    assert time.monotonic() - started >= 0.3


async def test_configured_latency_and_chunk_delay_slow_a_stream() -> None:
    async with (
        serve_fake_openai(latency=0.1, chunk_delay=0.05) as (_, base_url),
        openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as sdk,
    ):
        started = time.monotonic()
        stream = await sdk.chat.completions.create(model="m", messages=HELLO, stream=True)
        chunks = [chunk async for chunk in stream]
        elapsed = time.monotonic() - started

    assert len(chunks) == 6
    assert elapsed >= 0.1 + 5 * 0.05


async def test_invalid_fault_header_answers_400(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "m", "messages": HELLO},
        headers={"Authorization": f"Bearer {API_KEY}", "x-fake-latency-ms": "soon"},
    ) as response:
        assert response.status == 400
        body = await response.json()

    assert body["error"]["param"] == "x-fake-latency-ms"


async def test_hang_never_answers_and_does_not_hold_up_shutdown(
    http: aiohttp.ClientSession,
) -> None:
    async def hang(base_url: str) -> str:
        try:
            async with http.post(
                f"{base_url}/v1/chat/completions",
                json={"model": "m", "messages": HELLO},
                headers={"x-fake-hang": "1"},
            ):
                return "answered"
        except aiohttp.ServerDisconnectedError:
            return "disconnected"

    async with asyncio.TaskGroup() as tasks:
        async with serve_fake_openai() as (fake, base_url):
            async with openai.AsyncOpenAI(
                base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=0.3
            ) as sdk:
                with pytest.raises(openai.APITimeoutError):
                    await sdk.chat.completions.create(
                        model="m", messages=HELLO, extra_headers={"x-fake-hang": "1"}
                    )
            pending = tasks.create_task(hang(base_url))
            for _ in range(500):
                if len(fake.requests) == 2:
                    break
                await asyncio.sleep(0.01)
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping

    assert pending.result() == "disconnected"
    assert stopped_in < 0.5


async def test_requests_are_recorded_as_the_upstream_saw_them(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="m",
        messages=HELLO,
        extra_headers={"X-Trace": "abc"},
        extra_query={"api-version": "2024-10-21"},
    )
    await client.models.list()

    first, second = fake.requests
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.query_string == "api-version=2024-10-21"
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert first.headers["x-trace"] == "abc"
    assert first.json == {"model": "m", "messages": HELLO}
    assert b'"hello big world"' in first.body
    assert (second.method, second.path, second.body, second.json) == (
        "GET",
        "/v1/models",
        b"",
        None,
    )

    fake.reset()

    assert fake.requests == []


async def test_unparseable_bodies_are_recorded_raw(
    fake: FakeOpenAI, base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{base_url}/v1/chat/completions", data=b"\xffnot json"):
        pass

    assert fake.requests[0].body == b"\xffnot json"
    assert fake.requests[0].json is None


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    model = await client.models.retrieve("gpt-4o")

    assert [m.id for m in page.data] == list(DEFAULT_MODELS)
    assert (model.id, model.object, model.owned_by) == ("gpt-4o", "model", "wardgate-fake")
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_embeddings_are_deterministic_in_both_encodings(
    client: openai.AsyncOpenAI,
) -> None:
    as_base64 = await client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
    as_floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["alpha beta", "gamma"], encoding_format="float"
    )
    wide = await client.embeddings.create(model="e", input="alpha beta", dimensions=32)

    vectors = [d.embedding for d in as_base64.data]
    assert vectors == [d.embedding for d in as_floats.data]
    assert [len(v) for v in vectors] == [8, 8]
    assert vectors[0] != vectors[1]
    assert all(-1 <= x < 1 for v in vectors for x in v)
    assert wide.data[0].embedding[:8] == vectors[0]
    assert as_base64.usage.prompt_tokens == 3
    assert as_base64.model == "text-embedding-3-small"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-openai")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_serves_https_with_an_ssl_context(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))

    async with (
        serve_fake_openai(ssl_context=server_context) as (_, base_url),
        http.get(f"{base_url}/v1/models", ssl=client_context) as response,
    ):
        assert response.status == 200

    assert base_url.startswith("https://127.0.0.1:")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_runs_as_a_process_and_stops_cleanly_on_a_signal(
    signum: signal.Signals, http: aiohttp.ClientSession
) -> None:
    async with fake_process("--api-key", "k") as (process, base_url):
        async with http.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer k"}) as response:
            assert response.status == 200
        process.send_signal(signum)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    assert process.stderr is not None
    rest = await process.stderr.read()
    assert rest == b"fake-openai stopped\n"


async def test_api_key_file_keeps_the_key_out_of_the_command_line(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    key_file = tmp_path / "provider.key"
    key_file.write_text("sk-from-file\n")  # a trailing newline, as an editor leaves it, is not part of the key
    async with fake_process("--api-key-file", str(key_file)) as (_, base_url):
        async with http.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer sk-from-file"}) as response:
            assert response.status == 200
        async with http.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer sk-wrong"}) as response:
            assert response.status == 401


@pytest.mark.parametrize(("content", "message"), [(None, "No such file"), ("  \n", "is empty")])
def test_api_key_file_that_is_missing_or_empty_is_refused(tmp_path: Path, content: str | None, message: str) -> None:
    key_file = tmp_path / "provider.key"
    if content is not None:
        key_file.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "tests.fakes.openai_provider", "--port", "0", "--api-key-file", str(key_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--api-key-file" in result.stderr and message in result.stderr, result.stderr


def _post(http: aiohttp.ClientSession, base_url: str, headers: dict[str, str], stream: bool = False) -> Any:
    return http.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "m", "messages": HELLO, "stream": stream},
        headers={"Authorization": f"Bearer {API_KEY}", **headers},
    )


async def test_status_header_answers_that_status_with_retry_after(base_url: str, http: aiohttp.ClientSession) -> None:
    async with _post(http, base_url, {"x-fake-status": "503", "x-fake-retry-after": "2"}) as response:
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        assert (await response.json())["error"]["type"] == "server_error"
    async with _post(http, base_url, {"x-fake-status": "429"}) as response:
        assert response.status == 429 and "Retry-After" not in response.headers


async def test_target_header_limits_faults_to_the_named_fake(http: aiohttp.ClientSession) -> None:
    async with serve_fake_openai(name="gemini") as (_, gemini), serve_fake_openai(name="openai") as (_, other):
        faults = {"x-fake-status": "500", "x-fake-target": "gemini"}
        async with _post(http, gemini, faults) as response:
            assert response.status == 500
        async with _post(http, other, faults) as response:
            assert response.status == 200


async def test_reset_closes_the_connection_before_any_answer(base_url: str, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with _post(http, base_url, {"x-fake-reset": "1"}):
            pass


async def test_silent_stream_sends_headers_then_nothing(http: aiohttp.ClientSession) -> None:
    async with (
        serve_fake_openai(silent_stream=True) as (_, base_url),
        _post(http, base_url, {}, stream=True) as response,
    ):
        assert response.status == 200 and response.content_type == "text/event-stream"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.content.read(1), 0.3)


async def test_instance_faults_apply_to_the_next_n_requests_only(http: aiohttp.ClientSession) -> None:
    async with serve_fake_openai(status=503, retry_after=1, fail_times=2) as (fake, base_url):
        statuses = []
        for _ in range(3):
            async with _post(http, base_url, {}) as response:
                statuses.append(response.status)
        assert statuses == [503, 503, 200]
        fake.fail_next(1, reset=True)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with _post(http, base_url, {}):
                pass
        async with _post(http, base_url, {}) as response:
            assert response.status == 200
        assert len(fake.requests) == 5
