"""The upstream call of an admitted request: forward, then relay chunk by chunk or buffer for plugins.

    outgoing request (headers cleaned, plugins applied) ─▶ secret injected (auth) ─▶ X-Forwarded-*, trace
    ─▶ http1.Pool ─────┬─ no response-body plugin ─▶ relay: status + headers (plugins' response_headers),
                       │                             then each chunk as it comes (SSE stays a stream); an
                       │                             answer of known length ≤ WHOLE_ANSWER_MAX: one write
                       └─ a plugin reads the body ─▶ buffer (≤ MAX_BUFFERED_RESPONSE), plugins, one answer
Failures are typed: UpstreamRefused (before the client got a status line: a clean error response) and
StreamBroken (after: the client connection is cut, as a proxy must). A config with retries, fallbacks, a
first-token timeout or several endpoints goes through `_tries` (attempts.py decides what follows a failed
try); the others take one try, exactly as above. Every try leaves an AttemptRecord and a span.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import aiohttp
from aiohttp import web

from wardgate.cluster.authorize.resilience import Endpoint
from wardgate.cluster.authorize.state import GatewayState, Route
from wardgate.cluster.errors import Refused, Unavailable
from wardgate.cluster.observability.otlp import SpanKind
from wardgate.cluster.observability.record import AttemptRecord
from wardgate.cluster.plugins.flow import HttpFlow
from wardgate.cluster.plugins.flow import Request as FlowRequest
from wardgate.cluster.plugins.flow import Response as FlowResponse
from wardgate.cluster.plugins.manager import ChainRun
from wardgate.cluster.proxy import assertion, http1
from wardgate.cluster.proxy.attempts import FIRST_TOKEN_TIMEOUT, AttemptFailed, Plan, hop_request, retry_after
from wardgate.cluster.proxy.balancer import Balancer
from wardgate.cluster.proxy.cors import cors_headers
from wardgate.cluster.proxy.exchange import Exchange, openai_error
from wardgate.cluster.proxy.headers import client_response_headers
from wardgate.cluster.proxy.llm import ResponseTap
from wardgate.cluster.proxy.metering import limit_headers
from wardgate.cluster.proxy.upstream_auth import OAuth2TokenCache, auth_header

MAX_BUFFERED_RESPONSE = 32 * 1024 * 1024
"""The largest upstream response held in memory for plugins with a `response` hook (larger: 502)."""
MAX_DRAINED = 64 * 1024
"""A failed try's answer up to this size is read (and dropped) so that its connection is reused."""
WHOLE_ANSWER_MAX = 256 * 1024
"""An answer with a Content-Length up to this is read whole and sent in one write (_answer_whole)."""
ATTEMPTS_HEADER = "x-wardgate-attempts"


class UpstreamRefused(Exception):
    """The request cannot be completed upstream; nothing was sent to the client yet."""

    def __init__(self, refused: Refused, reason: str) -> None:
        super().__init__(reason)
        self.refused = refused
        self.reason = reason


class StreamBroken(Exception):
    """The upstream failed after the client got the status line: the client connection is cut."""


def rewrite_path(route: Route, raw_path: str, endpoint: Endpoint | None = None) -> str:
    path_cfg = route.config.http.path
    if path_cfg.remove_prefix:
        prefix = path_cfg.remove_prefix.rstrip("/")
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
    if path_cfg.add_prefix:
        raw_path = path_cfg.add_prefix.rstrip("/") + raw_path
    return (endpoint.base_path if endpoint is not None else route.base_path) + raw_path


def complete(ex: Exchange, answer: FlowResponse, plugin: str | None) -> web.Response:
    """A whole response from the plugins (their answer, or a buffered upstream response they saw)."""
    body = answer.body or b""
    headers = answer.headers
    if not body and answer.status >= 400 and plugin is not None and "Content-Type" not in headers:
        error = openai_error(
            answer.status,
            f"The request was rejected by the gateway (plugin {plugin!r}).",
            "invalid_request_error",
            "plugin_rejected",
        )
        body, headers["Content-Type"] = error.body, "application/json"  # type: ignore[assignment]
    response = web.Response(status=answer.status, body=body, headers=headers)
    response.headers["x-request-id"] = ex.request_id
    _add_cors(ex, response)
    limit_headers(ex, response)
    ex.record.bytes_out = len(body)
    return response


def _add_cors(ex: Exchange, response: web.StreamResponse) -> None:
    cors = ex.route.config.http.cors
    if cors is not None and ex.origin:
        response.headers.update(cors_headers(cors, ex.origin) or {})


class Upstream:
    """Sends admitted requests upstream over one shared client session."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        scheme: str,
        assertions: assertion.AssertionSigner | None = None,
        balancer: Balancer | None = None,
    ) -> None:
        self.client = client
        """aiohttp's client session: upstream OAuth2 tokens and the MCP servers of multi-server Services. The
        relay itself goes through `pool` (http1.py), which costs far less per request."""
        self.pool = http1.Pool()
        self._scheme = scheme
        self._oauth2 = OAuth2TokenCache(client)
        self._assertions = assertions
        self.balancer = balancer if balancer is not None else Balancer()

    async def _prepare(
        self, ex: Exchange, state: GatewayState, route: Route, endpoint: Endpoint, outgoing: FlowRequest, buffered: bool
    ) -> bytes:
        """Headers for the upstream; returns the new span id (the upstream's parent in the trace)."""
        headers = outgoing.headers
        if buffered or ex.body_filter is not None:
            headers["Accept-Encoding"] = "identity"
        auth = route.config.http.auth
        if auth is not None:
            try:
                name, value = await auth_header(auth, state.secrets, self._oauth2)
            except Unavailable as exc:
                raise UpstreamRefused(Refused.UPSTREAM_AUTH, str(exc)) from exc
            headers[name] = value
        identity_assertion = route.config.http.identity_assertion
        if identity_assertion.enabled:
            headers[assertion.HEADER] = self._assertion(ex, identity_assertion.audience)
        headers["Host"] = endpoint.netloc
        headers["X-Forwarded-For"] = ex.request.remote or ""
        headers["X-Forwarded-Proto"] = self._scheme
        headers["X-Forwarded-Host"] = ex.host
        headers["x-request-id"] = ex.request_id
        span = os.urandom(8)
        headers["traceparent"] = ex.trace.traceparent(span)
        return span

    def _assertion(self, ex: Exchange, audience: str | None) -> str:
        if self._assertions is None:
            raise UpstreamRefused(Refused.UPSTREAM_AUTH, "identity assertion enabled, but this listener cannot sign")
        assert ex.admission is not None
        user = ex.admission.principal.user
        return self._assertions.assertion(
            user.metadata.name, ex.record.session, tuple(user.spec.groups), audience or ex.record.service or ""
        )

    async def forward(
        self, ex: Exchange, state: GatewayState, outgoing: FlowRequest, run: ChainRun | None
    ) -> web.StreamResponse:
        route = ex.route
        if ex.pinned is not None:
            return await self._try(ex, state, route, ex.pinned, outgoing, run, None)
        if not route.retry.resilient:
            return await self._try(ex, state, route, route.endpoints[0], outgoing, run, None)
        return await self._tries(ex, state, outgoing, run)

    async def _tries(
        self, ex: Exchange, state: GatewayState, outgoing: FlowRequest, run: ChainRun | None
    ) -> web.StreamResponse:
        """Try, and after a failed try what the Plan says: wait and try again, or the next fallback."""
        assert ex.facts is not None and ex.admission is not None
        loop = asyncio.get_running_loop()
        streaming = ex.admission.body_map.get("stream") is True
        plan = Plan.start(ex.route, len(ex.facts.body), streaming, loop.time())
        avoid: str | None = None
        while True:
            route = plan.route
            endpoint = self.balancer.pick(route.endpoints, route.retry, avoid)
            try:
                return await self._try(ex, state, route, endpoint, outgoing, run, plan)
            except AttemptFailed as failed:
                step = failed.step
                assert step is not None
            avoid = endpoint.url
            if step.wait:
                await asyncio.sleep(step.wait)
            for name, why in step.skipped:
                ex.record.attempts.append(AttemptRecord(name, None, None, 0.0, why))
            plan.advance(step)
            if step.fallback is not None:
                avoid = None
                outgoing, run = await hop_request(ex, plan.route, plan.model)
                ex.record.upstream_model = plan.model or ex.record.upstream_model
                if ex.flow is not None and ex.flow.response is not None and run is not None:
                    return await _plugin_answer(ex, plan.route, ex.flow, run)

    async def _try(
        self,
        ex: Exchange,
        state: GatewayState,
        route: Route,
        endpoint: Endpoint,
        outgoing: FlowRequest,
        run: ChainRun | None,
        plan: Plan | None,
    ) -> web.StreamResponse:
        """One try. With a plan, a counted failure before the first byte raises AttemptFailed (its step set)
        when another try follows; without one, or when nothing follows, the failure goes to the client."""
        buffered = run is not None and run.wants_response_body
        span = await self._prepare(ex, state, route, endpoint, outgoing, buffered)
        target = rewrite_path(route, outgoing.path, endpoint)
        if outgoing.query:
            target += "?" + outgoing.query
        timeouts = route.config.http.timeouts
        balanced = len(route.endpoints) > 1
        if balanced:
            self.balancer.started(endpoint)
        started = time.perf_counter()
        status: int | None = None
        reason, healthy = "answered", True
        window: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if plan is not None and plan.deadline is not None:
            window = asyncio.timeout_at(plan.deadline)
        try:
            async with (
                window as deadline,
                self.pool.request(
                    outgoing.method,
                    endpoint.scheme,
                    endpoint.host,
                    endpoint.port,
                    target,
                    outgoing.headers.items(),
                    outgoing.body,
                    http1.Timeouts(timeouts.connect, timeouts.read),
                ) as upstream,
            ):
                status = ex.record.upstream_status = upstream.status
                if ex.answered is not None:
                    ex.answered(endpoint, upstream.headers)
                first: bytes | None = None
                if plan is not None:
                    first = await _before_commit(upstream, plan, started)
                    if isinstance(deadline, asyncio.Timeout):
                        deadline.reschedule(None)
                if status >= 400:
                    reason = f"status {status}"
                    healthy = status < 500
                if buffered:
                    assert ex.flow is not None and run is not None
                    return await self._buffer(ex, route, upstream, started, ex.flow, run, first)
                return await self._relay(ex, route, upstream, started, run, first)
        except http1.BadRequestHead as exc:
            reason, healthy = "bad request head", True
            raise UpstreamRefused(Refused.UPSTREAM_FAILED, f"the request cannot be sent upstream: {exc}") from exc
        except (AttemptFailed, TimeoutError, http1.UpstreamError) as exc:
            failure = exc if isinstance(exc, AttemptFailed) else _classify(exc)
            reason, healthy = failure.reason, failure.healthy
            if plan is not None and failure.step is None:
                failure.step = plan.decide(failure, asyncio.get_running_loop().time())
            if failure.step is not None:
                raise failure from None
            raise UpstreamRefused(*_refusal(exc, failure)) from exc
        finally:
            elapsed = time.perf_counter() - started
            if balanced:
                self.balancer.finished(endpoint, route.retry, healthy)
            ex.record.upstream_ms = round(elapsed * 1000, 3)
            ex.record.attempts.append(AttemptRecord(route.name, endpoint.netloc, status, ex.record.upstream_ms, reason))
            ex.span(
                f"upstream {route.name}",
                started,
                {
                    "server.address": endpoint.netloc,
                    "http.request.method": outgoing.method,
                    "http.response.status_code": status,
                    "wardgate.config": route.name,
                    "wardgate.attempt": len(ex.record.attempts),
                    "wardgate.attempt.reason": reason,
                },
                SpanKind.CLIENT,
                span,
            )

    async def _buffer(
        self,
        ex: Exchange,
        route: Route,
        upstream: http1.Reply,
        started: float,
        flow: HttpFlow,
        run: ChainRun,
        first: bytes | None,
    ) -> web.StreamResponse:
        """Read the whole upstream response, let the plugins see and change it, then send it."""
        data = bytearray(first or b"")
        if first:
            ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
        try:
            async for chunk in upstream.chunks():
                if not data:
                    ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
                data += chunk
                if len(data) > MAX_BUFFERED_RESPONSE:
                    raise UpstreamRefused(
                        Refused.UPSTREAM_TOO_LARGE,
                        f"upstream response over {MAX_BUFFERED_RESPONSE} bytes, too large for response plugins",
                    )
        except (http1.UpstreamError, TimeoutError) as exc:
            raise UpstreamRefused(Refused.UPSTREAM_FAILED, f"upstream failed mid-body: {type(exc).__name__}") from exc
        tap = ex.tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        tap.feed(bytes(data))
        status = upstream.status
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        headers.update(ex.answer_headers)
        if ex.body_filter is not None:
            status, content_type = ex.body_filter.head(status, upstream.headers.get("Content-Type", ""))
            if content_type is not None:
                headers["Content-Type"] = content_type
            data = bytearray(await ex.body_filter.feed(bytes(data)) + await ex.body_filter.flush())
        ex.record.usage, ex.record.finish_reasons = tap.usage(), tap.finish_reasons()
        for name, value in route.add_response_headers:
            headers[name] = value
        flow.response = FlowResponse(status, headers, bytes(data))
        await run.response_headers(flow)
        await run.response(flow)
        response = complete(ex, flow.response, None)
        _attempts_header(ex, response, route, upstream.status)
        return response

    async def _relay(
        self,
        ex: Exchange,
        route: Route,
        upstream: http1.Reply,
        started: float,
        run: ChainRun | None,
        first: bytes | None,
    ) -> web.StreamResponse:
        request = ex.request
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        headers.update(ex.answer_headers)
        for name, value in route.add_response_headers:
            headers[name] = value
        status = upstream.status
        rewrite = ex.body_filter
        if rewrite is not None:
            status, content_type = rewrite.head(status, upstream.headers.get("Content-Type", ""))
            if content_type is not None:
                headers["Content-Type"] = content_type
        if run is not None and ex.flow is not None:
            ex.flow.response = FlowResponse(status, headers, None)
            await run.response_headers(ex.flow)
            status, headers = ex.flow.response.status, ex.flow.response.headers
        length = upstream.content_length
        whole = rewrite is None and request.method != "HEAD" and length is not None and length <= WHOLE_ANSWER_MAX
        kind = web.Response if whole else web.StreamResponse
        response = kind(status=status, reason=upstream.reason if status == upstream.status else None)
        response.headers.extend(headers)
        response.headers["x-request-id"] = ex.request_id
        _add_cors(ex, response)
        limit_headers(ex, response)
        _attempts_header(ex, response, route, upstream.status)
        tap = ex.tap = ResponseTap(upstream.headers.get("Content-Type", ""), ex.strip_usage)
        if isinstance(response, web.Response):
            return await _answer_whole(ex, upstream, response, tap, started, first)
        if length is not None and request.method != "HEAD" and rewrite is None:
            response.content_length = length
        sent = 0
        await response.prepare(request)
        try:
            if first:
                ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
                out = tap.feed(first)
                await response.write(await rewrite.feed(out) if rewrite is not None else out)
                sent = len(first)
            async for chunk in upstream.chunks():
                if sent == 0:
                    ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
                out = tap.feed(chunk)  # the chunk; without the usage chunk the gateway asked for (ex.strip_usage)
                if rewrite is not None:
                    out = await rewrite.feed(out)
                if out:
                    await response.write(out)
                sent += len(chunk)
            rest = tap.flush()
            if rewrite is not None:
                rest = await rewrite.feed(rest) + await rewrite.flush()
            if rest:
                await response.write(rest)
        except (http1.UpstreamError, TimeoutError) as exc:
            ex.record.bytes_out = sent
            ex.record.error = f"upstream failed mid-stream: {type(exc).__name__}"
            if request.transport is not None:
                request.transport.abort()
            raise StreamBroken from exc
        await response.write_eof()
        ex.record.bytes_out = sent
        ex.record.usage, ex.record.finish_reasons = tap.usage(), tap.finish_reasons()
        return response


async def _answer_whole(
    ex: Exchange,
    upstream: http1.Reply,
    response: web.Response,
    tap: ResponseTap,
    started: float,
    first: bytes | None,
) -> web.Response:
    """A small answer of known length is read whole and sent with its head in one write (a streamed relay
    costs a TLS record and a send for the head, each chunk and the end)."""
    try:
        rest = await upstream.read()
        data = first + rest if first else rest
        if len(data) != upstream.content_length:  # never expected (llhttp counts), but cut off as a relay would
            raise http1.ResponseBroken("short answer")
    except (http1.UpstreamError, TimeoutError) as exc:
        ex.record.bytes_out, ex.record.error = 0, f"upstream failed mid-stream: {type(exc).__name__}"
        if ex.request.transport is not None:
            ex.request.transport.abort()
        raise StreamBroken from exc
    if data:
        ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
    response.body = tap.feed(data) + tap.flush()
    ex.record.bytes_out = len(data)
    ex.record.usage, ex.record.finish_reasons = tap.usage(), tap.finish_reasons()
    return response


async def _before_commit(upstream: http1.Reply, plan: Plan, started: float) -> bytes | None:
    """Before the client sees anything: a counted failure status raises AttemptFailed (with its step) when
    another try follows; otherwise the first byte of the answer is read here (within `firstTokenTimeout` for
    a stream), so that an upstream that dies or stays silent before it is one more failed try."""
    status = upstream.status
    if status >= 400:
        failure = AttemptFailed("status", status, retry_after(upstream.headers))
        if plan.counts(failure):
            failure.step = plan.decide(failure, asyncio.get_running_loop().time())
            if failure.step is not None:
                await _drain(upstream)
                raise failure
        return None
    limit = plan.first_token_timeout()
    try:
        if limit is None:
            return await upstream.readany()
        return await asyncio.wait_for(upstream.readany(), max(0.001, limit - (time.perf_counter() - started)))
    except http1.UpstreamError as exc:
        raise _classify(exc) from exc
    except TimeoutError as exc:
        raise AttemptFailed(FIRST_TOKEN_TIMEOUT) from exc


async def _drain(upstream: http1.Reply) -> None:
    """Read a small failed answer so its connection goes back to the pool; a large one is closed instead."""
    length = upstream.content_length
    if length is None or length > MAX_DRAINED:
        upstream.close()
        return
    with contextlib.suppress(http1.UpstreamError, TimeoutError):
        async with asyncio.timeout(1.0):
            await upstream.read()


def _classify(exc: BaseException) -> AttemptFailed:
    if isinstance(exc, http1.UpstreamError):
        return AttemptFailed(exc.kind)
    if isinstance(exc, TimeoutError):
        return AttemptFailed("timeout")
    return AttemptFailed("reset")


def _refusal(exc: BaseException, failure: AttemptFailed) -> tuple[Refused, str]:
    if failure.kind == FIRST_TOKEN_TIMEOUT:
        return Refused.UPSTREAM_TIMEOUT, "upstream sent nothing within firstTokenTimeout"
    if isinstance(exc, TimeoutError) and not isinstance(exc, http1.UpstreamError):
        return Refused.UPSTREAM_TIMEOUT, "upstream timed out (retry.timeout reached)"
    if isinstance(exc, TimeoutError) or failure.kind == "timeout":
        return Refused.UPSTREAM_TIMEOUT, "upstream timed out"
    if isinstance(exc, AttemptFailed):
        return Refused.UPSTREAM_FAILED, f"upstream failed before its first byte: {failure.reason}"
    return Refused.UPSTREAM_UNREACHABLE, f"upstream unreachable: {type(exc).__name__}"


def _attempts_header(ex: Exchange, response: web.StreamResponse, route: Route, status: int) -> None:
    """`x-wardgate-attempts: default=503, default=503, openai=200` when the admitted config asks for it."""
    if ex.route.retry.attempts_header:
        tries = [f"{a.config}={a.status if a.status is not None else a.reason}" for a in ex.record.attempts]
        response.headers[ATTEMPTS_HEADER] = ", ".join([*tries, f"{route.name}={status}"])


async def _plugin_answer(ex: Exchange, route: Route, flow: HttpFlow, run: ChainRun) -> web.Response:
    """A fallback's plugin answered in its request phase: its response phase runs, no upstream."""
    assert flow.response is not None
    ex.record.answered_by = run.answered_by
    flow.response.headers.extend(route.add_response_headers)
    await run.response_headers(flow)
    if run.wants_response_body:
        await run.response(flow)
    return complete(ex, flow.response, run.answered_by)
