"""The upstream call of an admitted request: forward, then relay chunk by chunk or buffer for plugins.

    outgoing request (headers cleaned, plugins applied) ─▶ secret injected (auth) ─▶ X-Forwarded-*, trace
    ─▶ aiohttp client ─┬─ no response-body plugin ─▶ relay: status + headers (plugins' response_headers),
                       │                             then each chunk as it comes (SSE stays a stream)
                       └─ a plugin reads the body ─▶ buffer (≤ MAX_BUFFERED_RESPONSE), plugins, one answer
Failures are typed: UpstreamRefused (before the client got a status line: a clean error response) and
StreamBroken (after: the client connection is cut, as a proxy must).
"""

from __future__ import annotations

import os
import time

import aiohttp
from aiohttp import web
from yarl import URL

from cluster.authorize.state import GatewayState, Route
from cluster.errors import Refused, Unavailable
from cluster.observability.otlp import SpanKind
from cluster.plugins.flow import HttpFlow
from cluster.plugins.flow import Request as FlowRequest
from cluster.plugins.flow import Response as FlowResponse
from cluster.plugins.manager import ChainRun
from cluster.proxy import assertion
from cluster.proxy.cors import cors_headers
from cluster.proxy.exchange import Exchange, openai_error
from cluster.proxy.headers import client_response_headers
from cluster.proxy.llm import ResponseTap
from cluster.proxy.upstream_auth import OAuth2TokenCache, auth_header

MAX_BUFFERED_RESPONSE = 32 * 1024 * 1024
"""The largest upstream response held in memory for plugins with a `response` hook (larger: 502)."""


class UpstreamRefused(Exception):
    """The request cannot be completed upstream; nothing was sent to the client yet."""

    def __init__(self, refused: Refused, reason: str) -> None:
        super().__init__(reason)
        self.refused = refused
        self.reason = reason


class StreamBroken(Exception):
    """The upstream failed after the client got the status line: the client connection is cut."""


def rewrite_path(route: Route, raw_path: str) -> str:
    path_cfg = route.config.http.path
    if path_cfg.remove_prefix:
        prefix = path_cfg.remove_prefix.rstrip("/")
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
    if path_cfg.add_prefix:
        raw_path = path_cfg.add_prefix.rstrip("/") + raw_path
    return route.base_path + raw_path


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
    ex.record.bytes_out = len(body)
    return response


def _add_cors(ex: Exchange, response: web.StreamResponse) -> None:
    cors = ex.route.config.http.cors
    if cors is not None and ex.origin:
        response.headers.update(cors_headers(cors, ex.origin) or {})


class Upstream:
    """Sends admitted requests upstream over one shared client session."""

    def __init__(
        self, client: aiohttp.ClientSession, scheme: str, assertions: assertion.AssertionSigner | None = None
    ) -> None:
        self._client = client
        self._scheme = scheme
        self._oauth2 = OAuth2TokenCache(client)
        self._assertions = assertions

    async def _prepare(self, ex: Exchange, state: GatewayState, outgoing: FlowRequest, buffered: bool) -> bytes:
        """Headers for the upstream; returns the new span id (the upstream's parent in the trace)."""
        route, headers = ex.route, outgoing.headers
        if buffered:
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
        headers["Host"] = route.netloc
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
        buffered = run is not None and run.wants_response_body
        span = await self._prepare(ex, state, outgoing, buffered)
        url = f"{route.scheme}://{route.netloc}{rewrite_path(route, outgoing.path)}"
        if outgoing.query:
            url += "?" + outgoing.query
        timeouts = route.config.http.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)
        started = time.perf_counter()
        try:
            async with self._client.request(
                outgoing.method,
                URL(url, encoded=True),
                headers=outgoing.headers,
                data=outgoing.body or None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            ) as upstream:
                ex.record.upstream_status = upstream.status
                if buffered:
                    assert ex.flow is not None and run is not None
                    return await self._buffer(ex, upstream, started, ex.flow, run)
                return await self._relay(ex, upstream, started, run)
        except TimeoutError as exc:
            raise UpstreamRefused(Refused.UPSTREAM_TIMEOUT, "upstream timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamRefused(Refused.UPSTREAM_UNREACHABLE, f"upstream unreachable: {type(exc).__name__}") from exc
        finally:
            ex.record.upstream_ms = round((time.perf_counter() - started) * 1000, 3)
            ex.span(
                f"upstream {route.name}",
                started,
                {
                    "server.address": route.netloc,
                    "http.request.method": outgoing.method,
                    "http.response.status_code": ex.record.upstream_status,
                    "wardgate.config": route.name,
                },
                SpanKind.CLIENT,
                span,
            )

    async def _buffer(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, started: float, flow: HttpFlow, run: ChainRun
    ) -> web.StreamResponse:
        """Read the whole upstream response, let the plugins see and change it, then send it."""
        data = bytearray()
        try:
            async for chunk in upstream.content.iter_any():
                if not data:
                    ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
                data += chunk
                if len(data) > MAX_BUFFERED_RESPONSE:
                    raise UpstreamRefused(
                        Refused.UPSTREAM_TOO_LARGE,
                        f"upstream response over {MAX_BUFFERED_RESPONSE} bytes, too large for response plugins",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamRefused(Refused.UPSTREAM_FAILED, f"upstream failed mid-body: {type(exc).__name__}") from exc
        tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        tap.feed(bytes(data))
        ex.record.usage, ex.record.finish_reasons = tap.usage(), tap.finish_reasons()
        route = ex.route
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        for name, value in route.add_response_headers:
            headers[name] = value
        flow.response = FlowResponse(upstream.status, headers, bytes(data))
        await run.response_headers(flow)
        await run.response(flow)
        return complete(ex, flow.response, None)

    async def _relay(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, started: float, run: ChainRun | None
    ) -> web.StreamResponse:
        route, request = ex.route, ex.request
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        for name, value in route.add_response_headers:
            headers[name] = value
        status = upstream.status
        if run is not None and ex.flow is not None:
            ex.flow.response = FlowResponse(status, headers, None)
            await run.response_headers(ex.flow)
            status, headers = ex.flow.response.status, ex.flow.response.headers
        response = web.StreamResponse(status=status, reason=upstream.reason if status == upstream.status else None)
        response.headers.extend(headers)
        response.headers["x-request-id"] = ex.request_id
        _add_cors(ex, response)
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        sent = 0
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if sent == 0:
                    ex.record.upstream_first_byte_ms = round((time.perf_counter() - started) * 1000, 3)
                tap.feed(chunk)
                await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ex.record.bytes_out = sent
            ex.record.error = f"upstream failed mid-stream: {type(exc).__name__}"
            if request.transport is not None:
                request.transport.abort()
            raise StreamBroken from exc
        await response.write_eof()
        ex.record.bytes_out = sent
        ex.record.usage, ex.record.finish_reasons = tap.usage(), tap.finish_reasons()
        return response
