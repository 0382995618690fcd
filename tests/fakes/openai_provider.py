"""A fake OpenAI-compatible LLM provider for the tests, the lab and the benchmark.

It answers chat completions (JSON and SSE), model listings and embeddings with
deterministic content, records every request it receives, and injects faults
(latency, hangs, cut streams, error statuses) chosen at construction or per
request with ``x-fake-*`` headers. As a process::

    python -m tests.fakes.openai_provider --host 127.0.0.1 --port 8000

Contract, so that callers can predict every number:

* the reply is ``"echo: " + <text of the last user message>``, cut to
  ``max_reply_chars`` (or the fixed ``reply`` given at construction);
* a "token" is a whitespace-separated word: ``prompt_tokens`` is the sum over
  messages of ``words + 3``, ``completion_tokens`` the words of the reply;
  ``max_tokens``/``max_completion_tokens`` cut the reply to that many words
  with ``finish_reason`` ``"length"``;
* a stream sends a role chunk, one chunk per word, a ``finish_reason`` chunk,
  with ``stream_options.include_usage`` a usage chunk, then ``[DONE]``;
* model ``fake-rate-limit`` answers 429, ``fake-error-NNN`` answers status NNN,
  and every model in ``fail_models`` answers 500;
* failure modes for the gateway's retries and fallbacks, per instance (``status``,
  ``retry_after``, ``reset``, ``silent_stream``, ``latency``; ``fail_times=N``
  limits the instance's faults to its next N requests, and ``fail_next(...)``
  arms them on a running fake) or per request (``x-fake-status``,
  ``x-fake-retry-after``, ``x-fake-reset``, ``x-fake-silent``,
  ``x-fake-latency-ms``). ``x-fake-target: <name>[,<name>]`` makes the request's
  ``x-fake-*`` headers apply only to fakes of those names (one request passes
  several upstreams when the gateway falls back);
* ``reset`` closes the connection before any answer; ``silent_stream`` sends a
  stream's headers and then nothing until the server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import logging
import re
import signal
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypedDict, Unpack

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.faults import (
    CHUNK_DELAY_HEADER,
    FAIL_AFTER_CHUNKS_HEADER,
    HANG_HEADER,
    LATENCY_HEADER,
    NO_FAULTS,
    RESET_HEADER,
    RETRY_AFTER_HEADER,
    SHUTDOWN,
    SILENT_HEADER,
    STATUS_HEADER,
    TARGET_HEADER,
    ApiError,
    Faults,
    drop_connection,
    header_flag,
    header_number,
    injected,
    silent_stream,
)

log = logging.getLogger(__name__)


RATE_LIMIT_MODEL: Final = "fake-rate-limit"
ERROR_MODEL_PREFIX: Final = "fake-error-"
DEFAULT_MODELS: Final = ("fake-model", "gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

_MODEL_CREATED: Final = 1_700_000_000
_SYSTEM_FINGERPRINT: Final = "fp_fake"
_MAX_EMBEDDING_DIMENSIONS: Final = 4096
_WORD_BOUNDARY: Final = re.compile(r"(?<=\S)(?=\s)")
_SERVER_ERROR_MESSAGE: Final = "The server had an error while processing your request. Sorry about that!"


Json = dict[str, Any]


class FakeOptions(TypedDict, total=False):
    """Keyword arguments of `FakeOpenAI`, for helpers that build one."""

    api_key: str | None
    api_key_header: str
    chunk_delay: float
    latency: float
    fail_after_chunks: int | None
    hang: bool
    name: str
    status: int | None
    retry_after: float | None
    reset: bool
    silent_stream: bool
    fail_times: int | None
    fail_models: Iterable[str]
    max_reply_chars: int
    reply: str | None
    models: Sequence[str]
    embedding_dimensions: int
    record: bool


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it: what an upstream would have seen."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any


@dataclass(frozen=True, slots=True)
class Completion:
    """The deterministic answer to one chat request (see the module docstring)."""

    pieces: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> Json:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


_Route = Callable[[web.Request, Any, Faults], Awaitable[web.StreamResponse]]


class FakeOpenAI:
    """An OpenAI-compatible provider whose answers, usage and faults are predictable.

    ``api_key`` makes every endpoint demand ``Authorization: Bearer <api_key>``,
    or, when ``api_key_header`` names another header (``x-goog-api-key``), that
    header's value being exactly the key. ``latency``, ``chunk_delay`` (seconds),
    ``fail_after_chunks`` and ``hang`` are defaults that the ``x-fake-*`` request
    headers override. ``fail_after_chunks=N`` closes a stream's connection after
    N data chunks (before ``[DONE]`` at the latest) and a non-streaming request's
    connection before any answer. ``hang`` holds the request until the server
    shuts down, then closes the connection. ``status`` answers every request with
    that status (and ``retry_after`` seconds in ``Retry-After``), ``reset`` closes
    the connection before answering, ``silent_stream`` holds a stream after its
    headers; ``fail_times=N`` applies all these faults to the next N requests only.
    Set ``record=False`` for long runs.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_key_header: str = "authorization",
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        fail_after_chunks: int | None = None,
        hang: bool = False,
        name: str = "fake",
        status: int | None = None,
        retry_after: float | None = None,
        reset: bool = False,
        silent_stream: bool = False,
        fail_times: int | None = None,
        fail_models: Iterable[str] = (),
        max_reply_chars: int = 2000,
        reply: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dimensions: int = 8,
        record: bool = True,
    ) -> None:
        self.api_key = api_key
        self.api_key_header = api_key_header
        self.max_reply_chars = max_reply_chars
        self.reply = reply
        self.models = tuple(models)
        self.fail_models = frozenset(fail_models)
        self.embedding_dimensions = embedding_dimensions
        self.record = record
        self.name = name
        self._defaults = Faults(
            latency, chunk_delay, fail_after_chunks, hang, status, retry_after, reset, silent_stream
        )
        self._fail_remaining = fail_times
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)

    def reset(self) -> None:
        """Forget the recorded requests."""
        self.requests.clear()

    def fail_next(
        self,
        times: int | None = 1,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        reset: bool = False,
        silent_stream: bool = False,
        latency: float = 0.0,
        hang: bool = False,
        fail_after_chunks: int | None = None,
    ) -> None:
        """Arm faults on a running fake for its next `times` requests (None: until armed again)."""
        base = self._defaults
        self._defaults = Faults(
            latency, base.chunk_delay, fail_after_chunks, hang, status, retry_after, reset, silent_stream
        )
        self._fail_remaining = times

    def make_app(self) -> web.Application:
        app = web.Application()
        app[SHUTDOWN] = asyncio.Event()
        app.on_shutdown.append(_release_hung_requests)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @contextlib.asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[str]:
        """Listen on host:port (0 picks a free port) and yield the base URL."""
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            bound_host, bound_port = runner.addresses[0][:2]
            if ":" in bound_host:
                bound_host = f"[{bound_host}]"
            scheme = "https" if ssl_context is not None else "http"
            yield f"{scheme}://{bound_host}:{bound_port}"
        finally:
            await runner.cleanup()

    def complete(self, body: Json) -> Completion:
        """The answer this fake gives to a chat completion request body."""
        messages: list[Json] = body["messages"]
        if self.reply is not None:
            text = self.reply
        else:
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            text = ("echo: " + _text(last_user.get("content")))[: self.max_reply_chars]
        pieces = tuple(piece for piece in _WORD_BOUNDARY.split(text) if piece)
        finish_reason = "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, finish_reason = pieces[:limit], "length"
        return Completion(
            pieces=pieces,
            finish_reason=finish_reason,
            prompt_tokens=sum(len(_text(m.get("content")).split()) + 3 for m in messages),
            completion_tokens=len("".join(pieces).split()),
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        if self.record:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query_string=request.query_string,
                    headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                    body=body,
                    json=payload,
                )
            )
        try:
            faults = self._faults(request)
            if faults.reset:
                return drop_connection(request)
            if faults.hang:
                await request.app[SHUTDOWN].wait()
                return drop_connection(request)
            if faults.latency > 0:
                await asyncio.sleep(faults.latency)
            self._authenticate(request)
            if faults.status is not None:
                raise injected(faults)
            route = self._route(request)
            return await route(request, payload, faults)
        except ApiError as error:
            return error.response()

    def _instance_faults(self) -> Faults:
        remaining = self._fail_remaining
        if remaining is None:
            return self._defaults
        if remaining <= 0:
            return replace(NO_FAULTS, chunk_delay=self._defaults.chunk_delay)
        self._fail_remaining = remaining - 1
        return self._defaults

    def _faults(self, request: web.Request) -> Faults:
        defaults = self._instance_faults()
        headers = request.headers
        target = headers.get(TARGET_HEADER)
        if target is not None and self.name not in {t.strip() for t in target.split(",")}:
            return defaults
        latency = header_number(headers, LATENCY_HEADER)
        chunk_delay = header_number(headers, CHUNK_DELAY_HEADER)
        fail_after = header_number(headers, FAIL_AFTER_CHUNKS_HEADER)
        status = header_number(headers, STATUS_HEADER)
        retry_after = header_number(headers, RETRY_AFTER_HEADER)
        if status is not None and not 400 <= status <= 599:
            raise ApiError(400, f"Invalid {STATUS_HEADER} header: {status!r}.", param=STATUS_HEADER)
        return Faults(
            latency=defaults.latency if latency is None else latency / 1000,
            chunk_delay=defaults.chunk_delay if chunk_delay is None else chunk_delay / 1000,
            fail_after_chunks=defaults.fail_after_chunks if fail_after is None else int(fail_after),
            hang=header_flag(headers, HANG_HEADER, defaults.hang),
            status=defaults.status if status is None else int(status),
            retry_after=defaults.retry_after if retry_after is None else retry_after,
            reset=header_flag(headers, RESET_HEADER, defaults.reset),
            silent=header_flag(headers, SILENT_HEADER, defaults.silent),
        )

    def _authenticate(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        presented = request.headers.get(self.api_key_header)
        if presented is not None and self.api_key_header.lower() == "authorization":
            scheme, _, token = presented.partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if presented is None:
            raise ApiError(
                401,
                f"You didn't provide an API key. You need to provide your API key in the {self.api_key_header} header.",
            )
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _route(self, request: web.Request) -> _Route:
        method, path = request.method, request.path
        if method == "POST":
            if path.endswith("/chat/completions"):
                return self._chat
            if path.endswith("/embeddings"):
                return self._embeddings
        elif method == "GET":
            if path.endswith("/models"):
                return self._list_models
            _, found, model = path.rpartition("/models/")
            if found and model and "/" not in model:
                return self._retrieve_model
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _check_model(self, body: Json) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "you must provide a model parameter", param="model")
        if model == RATE_LIMIT_MODEL:
            raise ApiError(
                429,
                f"Rate limit reached for {model} on requests per min (RPM): Limit 1.",
                kind="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "1"},
            )
        if model in self.fail_models:
            raise ApiError(500, _SERVER_ERROR_MESSAGE, kind="server_error")
        status = model.removeprefix(ERROR_MODEL_PREFIX)
        if status != model and status.isdigit() and 400 <= int(status) <= 599:
            kind = "server_error" if int(status) >= 500 else "invalid_request_error"
            raise ApiError(int(status), f"Injected error {status} for {model}.", kind=kind)
        return model

    async def _chat(self, request: web.Request, body: Any, faults: Faults) -> web.StreamResponse:
        body = _require_object(body)
        model = self._check_model(body)
        _validate_chat(body)
        completion = self.complete(body)
        completion_id = f"chatcmpl-fake{next(self._ids):016d}"
        if body.get("stream") is True:
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            chunks = _chunks(completion_id, model, completion, include_usage=include_usage)
            if faults.silent:
                return await silent_stream(request)
            return await _stream(request, chunks, faults)
        if faults.fail_after_chunks is not None:
            return drop_connection(request)
        return _json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": completion.content,
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": completion.usage(),
                "system_fingerprint": _SYSTEM_FINGERPRINT,
            }
        )

    async def _embeddings(self, request: web.Request, body: Any, faults: Faults) -> web.StreamResponse:
        body = _require_object(body)
        model = self._check_model(body)
        texts = _embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", self.embedding_dimensions)
        if not isinstance(dimensions, int) or not 1 <= dimensions <= _MAX_EMBEDDING_DIMENSIONS:
            raise ApiError(400, "Invalid 'dimensions'.", param="dimensions", code="invalid_value")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = _embedding(text, dimensions)
            encoded: object = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(text.split()) for text in texts)
        return _json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _list_models(self, request: web.Request, body: Any, faults: Faults) -> web.StreamResponse:
        return _json_response({"object": "list", "data": [_model(m) for m in self.models]})

    async def _retrieve_model(self, request: web.Request, body: Any, faults: Faults) -> web.StreamResponse:
        model = request.path.rpartition("/models/")[2]
        if model not in self.models:
            raise ApiError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        return _json_response(_model(model))


@contextlib.asynccontextmanager
async def serve_fake_openai(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **options: Unpack[FakeOptions],
) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """Run a `FakeOpenAI` built from options; yield it and its base URL (no ``/v1``)."""
    fake = FakeOpenAI(**options)
    async with fake.serve(host, port, ssl_context=ssl_context) as base_url:
        yield fake, base_url


async def _release_hung_requests(app: web.Application) -> None:
    app[SHUTDOWN].set()


async def _stream(request: web.Request, chunks: list[Json], faults: Faults) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    limit = faults.fail_after_chunks
    for index, chunk in enumerate(chunks):
        if limit is not None and index >= limit:
            break
        if index and faults.chunk_delay > 0:
            await asyncio.sleep(faults.chunk_delay)
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if limit is not None:
        return drop_connection(request)
    await response.write(b"data: [DONE]\n\n")
    return response


def _chunks(completion_id: str, model: str, completion: Completion, *, include_usage: bool) -> list[Json]:
    created = int(time.time())

    def chunk(choices: list[Json]) -> Json:
        body: Json = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": _SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None
        return body

    def choice(delta: Json, finish_reason: str | None = None) -> list[Json]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    chunks = [chunk(choice({"role": "assistant", "content": "", "refusal": None}))]
    chunks.extend(chunk(choice({"content": piece})) for piece in completion.pieces)
    chunks.append(chunk(choice({}, completion.finish_reason)))
    if include_usage:
        chunks.append(chunk([]) | {"usage": completion.usage()})
    return chunks


def _json_response(body: Json) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _model(model_id: str) -> Json:
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "wardgate-fake"}


def _require_object(body: Any) -> Json:
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
        )
    return body


def _validate_chat(body: Json) -> None:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ApiError(
            400,
            "Invalid type for 'messages': expected an array of objects.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ApiError(400, f"Invalid '{name}'.", param=name, code="invalid_value")


def _text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _embedding_inputs(value: object) -> list[str]:
    """Normalise ``input`` (a string, strings, token ids, or lists of them) to texts."""
    items: list[object] = value if isinstance(value, list) else [value]
    if items and all(type(item) is int for item in items):
        items = [items]
    texts = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(type(t) is int for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            raise ApiError(400, "Invalid 'input'.", param="input", code="invalid_value")
    if not texts:
        raise ApiError(400, "Invalid 'input': empty array.", param="input", code="empty_array")
    return texts


def _embedding(text: str, dimensions: int) -> list[float]:
    """Values in [-1, 1) that float32 holds exactly, so base64 and JSON agree."""
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    return [(byte - 128) / 128 for byte in digest]


async def _serve_until_signalled(fake: FakeOpenAI, args: argparse.Namespace) -> None:
    ssl_context = None
    if args.certfile:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.certfile, args.keyfile)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with fake.serve(args.host, args.port, ssl_context=ssl_context) as base_url:
        log.info("fake-openai listening on %s", base_url)
        await stop.wait()
    log.info("fake-openai stopped")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_provider",
        description="Serve a fake OpenAI-compatible LLM provider.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help="demand this key (default: accept any request)")
    keys.add_argument("--api-key-file", help="demand the key in this file (kept out of the process list)")
    parser.add_argument("--api-key-header", default="authorization")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-model", action="append", default=[], dest="fail_models")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="private key for --certfile (PEM)")
    parser.add_argument("--record", action="store_true", help="keep requests in memory")
    args = parser.parse_args(argv)
    if args.api_key_file:
        try:
            args.api_key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            parser.error(f"--api-key-file: {exc}")
        if not args.api_key:
            parser.error(f"--api-key-file: {args.api_key_file} is empty")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fake = FakeOpenAI(
        api_key=args.api_key,
        api_key_header=args.api_key_header,
        chunk_delay=args.chunk_delay_ms / 1000,
        latency=args.latency_ms / 1000,
        fail_models=args.fail_models,
        record=args.record,
    )
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signalled(fake, args))


if __name__ == "__main__":
    main()
