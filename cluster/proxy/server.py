"""The public listener: one handler for every `<service>.<domain>` request.

    Host ─▶ ServicePipeline (404 if unknown or not public) ─▶ CORS preflight?
    ─▶ identify (bearer token or cookie; cache only) ─▶ read body (limit) ─▶ ctx, built once
    ─▶ dynamic config (first matching rule) ─▶ authorize (Service + User + Groups rules; default deny)
    ─▶ plugins' request phase on an HttpFlow (a plugin may answer: no upstream then)
    ─▶ upstream request (identity headers stripped, secret injected, X-Forwarded-* set)
    ─▶ plugins' response phase (the body is buffered only if a plugin that ran has a `response` hook)
    ─▶ relay the response chunk by chunk ─▶ one access-log line
Requests for the bare `<domain>` (token endpoint, discovery, login) go to the `apex` handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from cluster.errors import Unauthenticated, Unavailable
from cluster.identity.authenticate import SESSION_COOKIE, Authenticator, Identity
from cluster.observability.accesslog import AccessLog
from cluster.observability.metrics import Metrics
from cluster.observability.otlp import Exporter, SpanKind, SpanRecord, TraceContext, new_trace
from cluster.plugins.flow import HttpFlow
from cluster.plugins.flow import Request as FlowRequest
from cluster.plugins.flow import Response as FlowResponse
from cluster.plugins.manager import ChainRun, PluginError
from cluster.policy.context import build_ctx, parse_body_map
from cluster.policy.engine import Decision, EvalInput, evaluate
from cluster.proxy.authority import session_doc
from cluster.proxy.headers import client_response_headers, upstream_request_headers
from cluster.proxy.llm import ResponseTap, request_model
from cluster.proxy.pipeline import GatewayState, Route
from cluster.proxy.upstream_auth import OAuth2TokenCache, auth_header
from cluster.resources.common import Effect
from cluster.resources.service import Cors

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
MAX_HOST_LENGTH = 253
MAX_BUFFERED_RESPONSE = 32 * 1024 * 1024
"""The largest upstream response held in memory for plugins with a `response` hook (larger: 502)."""


class _StreamBroken(Exception):
    """The upstream failed after the client got the status line: the client connection is cut."""


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@dataclass(slots=True)
class Exchange:
    """What one request accumulates for its access-log line and its trace."""

    request_id: str
    started: float
    trace: TraceContext
    started_ns: int
    entry: dict[str, Any] = field(default_factory=dict)
    spans: list[SpanRecord] = field(default_factory=list)
    chain: ChainRun | None = None

    def span(
        self,
        name: str,
        started: float,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        span_id: bytes | None = None,
    ) -> SpanRecord:
        """A child of the server span from `started` (perf_counter) to now."""
        now = time.perf_counter()
        record = SpanRecord(
            name,
            span_id or os.urandom(8),
            self.trace.server_span,
            self.started_ns + int((started - self.started) * 1e9),
            self.started_ns + int((now - self.started) * 1e9),
            kind,
            attributes,
        )
        self.spans.append(record)
        return record


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Where a finished request's record goes besides the access log: metrics and OTLP."""

    metrics: Metrics
    exporter: Exporter

    @property
    def trust_traceparent(self) -> bool:
        return self.exporter.settings.trust_incoming_traceparent


def _safe_path(raw_path: str) -> bool:
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path or "%00" in lowered:
        return False
    segments = lowered.replace("%2e", ".").split("/")
    return not any(s in (".", "..") for s in segments)


def _rewrite_path(route: Route, raw_path: str) -> str:
    path_cfg = route.config.http.path
    if path_cfg.remove_prefix:
        prefix = path_cfg.remove_prefix.rstrip("/")
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
    if path_cfg.add_prefix:
        raw_path = path_cfg.add_prefix.rstrip("/") + raw_path
    return route.base_path + raw_path


def _cors_headers(cors: Cors, origin: str) -> dict[str, str] | None:
    if "*" not in cors.allow_origins and origin not in cors.allow_origins:
        return None
    headers = {
        "Access-Control-Allow-Origin": origin if cors.allow_credentials or "*" not in cors.allow_origins else "*",
        "Vary": "Origin",
    }
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(cors.expose_headers)
    return headers


class Gateway:
    """The request handler of the public listener (an aiohttp low-level handler)."""

    # The tunnel listener (proxy/tunnel.py) subclasses this handler: it names itself in the access log, is
    # plain HTTP inside WireGuard, serves non-public Services too, and identifies by source address.
    listener = "public"
    scheme = "https"
    requires_public = True
    telemetry: Telemetry | None = None

    def __init__(
        self,
        *,
        domain: str,
        state: Callable[[], GatewayState],
        authenticator: Authenticator,
        access_log: AccessLog,
        client: aiohttp.ClientSession,
        apex: Handler,
        node: str,
        login_url: Callable[[], str | None],
    ) -> None:
        self._domain = domain
        self._suffix = "." + domain
        self._state = state
        self._auth = authenticator
        self._log = access_log
        self._client = client
        self._apex = apex
        self._node = node
        self._login_url = login_url
        self._oauth2 = OAuth2TokenCache(client)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        if host == self._domain:
            return await self._apex(request)
        telemetry = self.telemetry
        trace = new_trace(request.headers.get("traceparent"), telemetry is not None and telemetry.trust_traceparent)
        ex = Exchange(os.urandom(16).hex(), time.perf_counter(), trace, time.time_ns())
        ex.entry.update(method=request.method, path=request.path, host=host[:MAX_HOST_LENGTH])
        status = 500
        try:
            response = await self._handle(request, host, ex)
            status = response.status
            return response
        except _StreamBroken:
            status = ex.entry.get("upstreamStatus", 502)
            ex.entry["error"] = ex.entry.get("error", "upstream stream broken")
            raise
        except asyncio.CancelledError:
            ex.entry["error"] = "client disconnected"
            status = 499
            raise
        finally:
            self._write_log(request, ex, status)

    def _write_log(self, request: web.BaseRequest, ex: Exchange, status: int) -> None:
        total = time.perf_counter() - ex.started
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "requestId": ex.request_id,
            "traceId": ex.trace.trace_id.hex(),
            "node": self._node,
            "listener": self.listener,
            "remote": request.remote,
            **ex.entry,
            "status": status,
            "durationMs": round(total * 1000, 3),
        }
        self._log.write(entry)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.metrics.observe(entry)
            if telemetry.exporter.enabled:
                server = SpanRecord(
                    f"{request.method} {ex.entry.get('service', '-')}",
                    ex.trace.server_span,
                    ex.trace.parent,
                    ex.started_ns,
                    ex.started_ns + int(total * 1e9),
                    SpanKind.SERVER,
                    _server_attributes(entry),
                    error=f"HTTP {status}" if status >= 500 else None,
                )
                telemetry.exporter.record(ex.trace, [server, *ex.spans, *_plugin_spans(ex)], entry)

    def _deny(self, ex: Exchange, status: int, reason: str, message: str, kind: str, code: str) -> web.Response:
        ex.entry["reason"] = reason
        response = openai_error(status, message, kind, code)
        response.headers["x-request-id"] = ex.request_id
        if status == 401:
            response.headers["WWW-Authenticate"] = f'Bearer realm="{self._domain}"'
        return response

    def _identify(self, request: web.BaseRequest) -> Identity:
        authorization = request.headers.get("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("Authorization is not `Bearer <token>`")
            return self._auth.from_token(token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return self._auth.from_token(cookie)
        raise Unauthenticated("no credentials")

    def _unauthenticated(self, request: web.BaseRequest, ex: Exchange, reason: str) -> web.StreamResponse:
        login = self._login_url()
        wants_html = "text/html" in request.headers.get("Accept", "")
        if login is not None and wants_html and request.method == "GET":
            ex.entry["reason"] = reason
            target = f"https://{request.host}{request.rel_url}"
            ex.entry["redirect"] = "login"
            return web.Response(status=302, headers={"Location": login + "?" + urlencode({"rd": target})})
        return self._deny(
            ex, 401, reason, "A valid Wardgate access token is required.", "invalid_request_error", "invalid_api_key"
        )

    async def _read_body(self, request: web.BaseRequest, limit: int) -> bytes | None:
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def _handle(self, request: web.BaseRequest, host: str, ex: Exchange) -> web.StreamResponse:
        state = self._state()
        name = host[: -len(self._suffix)] if host.endswith(self._suffix) else ""
        pipe = state.services.get(name) if name and "." not in name else None
        if pipe is None or (self.requires_public and not pipe.service.spec.is_public):
            return self._deny(
                ex,
                404,
                "unknown host",
                f"No service at {host[:MAX_HOST_LENGTH]!r}.",
                "invalid_request_error",
                "not_found",
            )
        ex.entry["service"] = pipe.name
        cors = pipe.default.config.http.cors if pipe.default is not None else None
        origin = request.headers.get("Origin")
        if (
            cors is not None
            and origin
            and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
        ):
            return self._preflight(cors, origin, ex)
        try:
            identity = self._identify(request)
        except Unauthenticated as exc:
            return self._unauthenticated(request, ex, str(exc))
        user = identity.user.metadata.name
        ex.entry.update(
            user=user,
            session=identity.session.metadata.name if identity.session else None,
            sessionType=identity.session.spec.type.value if identity.session else "CLIENTLESS",
            credential=identity.credential.metadata.name if identity.credential else None,
        )
        principal = state.principals.get(user)
        if principal is None:
            return self._deny(
                ex, 403, f"user {user!r} has no compiled policies", "Access denied.", "permission_denied", "forbidden"
            )
        if not _safe_path(request.rel_url.raw_path):
            return self._deny(
                ex, 400, "path escapes its prefix", "Invalid request path.", "invalid_request_error", "invalid_path"
            )
        limit = max(route.config.http.body.max_request_bytes for route in pipe.routes.values())
        body = await self._read_body(request, limit)
        if body is None:
            return self._deny(
                ex,
                413,
                "request body over the limit",
                f"The request body is larger than {limit} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        body_map = parse_body_map(body, request.headers.get("Content-Type", ""))
        ex.entry.update(bytesIn=len(body), model=request_model(body_map))
        inp = EvalInput(
            build_ctx(
                user=principal.doc,
                session=session_doc(identity),
                service=pipe.doc,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
                host=host,
                scheme=self.scheme,
                body=body,
                body_map=body_map,
                ip=request.remote or "",
                time=datetime.now(UTC).isoformat(),
            )
        )
        route, notes = pipe.pick_route(inp)
        if notes:
            ex.entry.setdefault("notes", []).extend(notes)
        if route is None:
            return self._deny(
                ex, 404, "no config matched", "No upstream for this request.", "invalid_request_error", "no_route"
            )
        ex.entry["config"] = route.name
        if len(body) > route.config.http.body.max_request_bytes:
            return self._deny(
                ex,
                413,
                "request body over the limit",
                "The request body is too large.",
                "invalid_request_error",
                "request_too_large",
            )
        authorize_started = time.perf_counter()
        decision = evaluate(state.rules_for(pipe, principal), inp)
        ex.entry["decision"] = _decision_entry(decision)
        ex.span("authorize", authorize_started, {f"wardgate.decision.{k}": v for k, v in ex.entry["decision"].items()})
        if decision.effect is not Effect.ALLOW:
            return self._deny(
                ex, 403, decision.reason.value, "Access denied by policy.", "permission_denied", "forbidden"
            )
        headers = upstream_request_headers(request.headers, route.remove_request_headers, SESSION_COOKIE)
        for name, value in route.add_request_headers:
            headers[name] = value
        url = request.rel_url
        outgoing = FlowRequest(request.method, url.raw_path, url.raw_query_string, headers, body)
        if not route.plugins:
            return await self._forward(request, route, outgoing, state, ex, host, origin, None)
        return await self._plugins(request, route, outgoing, state, ex, host, origin, inp)

    async def _plugins(
        self,
        request: web.BaseRequest,
        route: Route,
        outgoing: FlowRequest,
        state: GatewayState,
        ex: Exchange,
        host: str,
        origin: str | None,
        inp: EvalInput,
    ) -> web.StreamResponse:
        flow = HttpFlow(ex.entry.get("service", ""), ex.request_id, outgoing, inp.ctx)
        run = ex.chain = route.plugins.begin(inp)
        ex.entry["plugins"] = list(route.plugins.names)
        original = outgoing.body
        try:
            await run.request(flow)
        except PluginError as exc:
            return self._plugin_failed(ex, exc)
        finally:
            if run.notes:
                ex.entry.setdefault("notes", []).extend(run.notes)
        if flow.request.body is not original and flow.request.body != original:
            changed = request_model(parse_body_map(flow.request.body, flow.request.headers.get("Content-Type", "")))
            if changed != ex.entry.get("model"):
                ex.entry["upstreamModel"] = changed
        if flow.response is None:
            return await self._forward(request, route, flow.request, state, ex, host, origin, (flow, run))
        ex.entry["answeredBy"] = run.answered_by
        flow.response.headers.extend(route.add_response_headers)
        try:
            await run.response_headers(flow)
            if run.wants_response_body:
                await run.response(flow)
        except PluginError as exc:
            return self._plugin_failed(ex, exc)
        return self._complete(flow.response, route, ex, origin, run.answered_by)

    def _plugin_failed(self, ex: Exchange, exc: PluginError) -> web.Response:
        kind = "timeout" if "time" in exc.detail.lower() or "instruction" in exc.detail.lower() else "error"
        ex.entry.setdefault("pluginFailures", []).append({"plugin": exc.plugin, "hook": exc.hook, "kind": kind})
        log.error("service %s: %s; failing the request closed", ex.entry.get("service"), exc)
        return self._deny(
            ex, 500, str(exc), "The gateway could not process this request.", "server_error", "plugin_failed"
        )

    def _complete(
        self, answer: FlowResponse, route: Route, ex: Exchange, origin: str | None, plugin: str | None
    ) -> web.Response:
        """A whole response from the plugins (an answer, or a buffered upstream response they saw)."""
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
        cors = route.config.http.cors
        if cors is not None and origin:
            response.headers.update(_cors_headers(cors, origin) or {})
        ex.entry["bytesOut"] = len(body)
        return response

    def _preflight(self, cors: Cors, origin: str, ex: Exchange) -> web.Response:
        headers = _cors_headers(cors, origin)
        ex.entry["reason"] = "cors preflight"
        if headers is None:
            return web.Response(status=403, text="origin not allowed")
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(cors.allow_methods),
                "Access-Control-Allow-Headers": ", ".join(cors.allow_headers),
                "Access-Control-Max-Age": str(cors.max_age),
            }
        )
        return web.Response(status=204, headers=headers)

    async def _forward(
        self,
        request: web.BaseRequest,
        route: Route,
        outgoing: FlowRequest,
        state: GatewayState,
        ex: Exchange,
        host: str,
        origin: str | None,
        plugins: tuple[HttpFlow, ChainRun] | None,
    ) -> web.StreamResponse:
        http = route.config.http
        headers = outgoing.headers
        body = outgoing.body
        buffered = plugins is not None and plugins[1].wants_response_body
        if buffered:
            headers["Accept-Encoding"] = "identity"
        if http.auth is not None:
            try:
                name, value = await auth_header(http.auth, state.secrets, self._oauth2)
            except Unavailable as exc:
                log.error("service %s: upstream credentials unavailable: %s", ex.entry.get("service"), exc)
                return self._deny(
                    ex,
                    500,
                    str(exc),
                    "The gateway could not authenticate to the upstream.",
                    "server_error",
                    "upstream_auth_unavailable",
                )
            headers[name] = value
        headers["Host"] = route.netloc
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = self.scheme
        headers["X-Forwarded-Host"] = host
        headers["x-request-id"] = ex.request_id
        upstream_span = os.urandom(8)
        headers["traceparent"] = ex.trace.traceparent(upstream_span)
        query = outgoing.query
        url = f"{route.scheme}://{route.netloc}{_rewrite_path(route, outgoing.path)}"
        if query:
            url += "?" + query
        timeouts = http.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)
        upstream_started = time.perf_counter()
        try:
            async with self._client.request(
                outgoing.method,
                URL(url, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            ) as upstream:
                ex.entry["upstreamStatus"] = upstream.status
                if plugins is not None and buffered:
                    return await self._buffer(upstream, route, ex, origin, upstream_started, *plugins)
                return await self._relay(request, upstream, route, ex, origin, upstream_started, plugins)
        except _StreamBroken:
            raise
        except TimeoutError:
            return self._deny(
                ex,
                504,
                "upstream timed out",
                "The upstream did not answer in time.",
                "server_error",
                "upstream_timeout",
            )
        except aiohttp.ClientError as exc:
            return self._deny(
                ex,
                502,
                f"upstream unreachable: {type(exc).__name__}",
                "The upstream is unreachable.",
                "server_error",
                "upstream_unreachable",
            )
        finally:
            ex.entry["upstreamMs"] = round((time.perf_counter() - upstream_started) * 1000, 3)
            ex.span(
                f"upstream {route.name}",
                upstream_started,
                {
                    "server.address": route.netloc,
                    "http.request.method": outgoing.method,
                    "http.response.status_code": ex.entry.get("upstreamStatus"),
                    "wardgate.config": route.name,
                },
                SpanKind.CLIENT,
                upstream_span,
            )

    async def _buffer(
        self,
        upstream: aiohttp.ClientResponse,
        route: Route,
        ex: Exchange,
        origin: str | None,
        upstream_started: float,
        flow: HttpFlow,
        run: ChainRun,
    ) -> web.StreamResponse:
        """Read the whole upstream response, let the plugins see and change it, then send it."""
        data = bytearray()
        try:
            async for chunk in upstream.content.iter_any():
                if not data:
                    ex.entry["upstreamFirstByteMs"] = round((time.perf_counter() - upstream_started) * 1000, 3)
                data += chunk
                if len(data) > MAX_BUFFERED_RESPONSE:
                    return self._deny(
                        ex,
                        502,
                        f"upstream response over {MAX_BUFFERED_RESPONSE} bytes, too large for response plugins",
                        "The upstream response is too large.",
                        "server_error",
                        "upstream_response_too_large",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._deny(
                ex,
                502,
                f"upstream failed mid-body: {type(exc).__name__}",
                "The upstream failed.",
                "server_error",
                "upstream_unreachable",
            )
        tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        tap.feed(bytes(data))
        ex.entry.update(usage=tap.usage(), finishReasons=tap.finish_reasons())
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        for name, value in route.add_response_headers:
            headers[name] = value
        flow.response = FlowResponse(upstream.status, headers, bytes(data))
        try:
            await run.response_headers(flow)
            await run.response(flow)
        except PluginError as exc:
            return self._plugin_failed(ex, exc)
        return self._complete(flow.response, route, ex, origin, None)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        route: Route,
        ex: Exchange,
        origin: str | None,
        upstream_started: float,
        plugins: tuple[HttpFlow, ChainRun] | None,
    ) -> web.StreamResponse:
        headers = client_response_headers(upstream.headers, route.remove_response_headers)
        for name, value in route.add_response_headers:
            headers[name] = value
        status = upstream.status
        if plugins is not None:
            flow, run = plugins
            flow.response = FlowResponse(status, headers, None)
            try:
                await run.response_headers(flow)
            except PluginError as exc:
                return self._plugin_failed(ex, exc)
            status, headers = flow.response.status, flow.response.headers
        response = web.StreamResponse(status=status, reason=upstream.reason if status == upstream.status else None)
        response.headers.extend(headers)
        response.headers["x-request-id"] = ex.request_id
        cors = route.config.http.cors
        if cors is not None and origin:
            response.headers.update(_cors_headers(cors, origin) or {})
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        sent = 0
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if sent == 0:
                    ex.entry["upstreamFirstByteMs"] = round((time.perf_counter() - upstream_started) * 1000, 3)
                tap.feed(chunk)
                await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ex.entry.update(bytesOut=sent, error=f"upstream failed mid-stream: {type(exc).__name__}")
            if request.transport is not None:
                request.transport.abort()
            raise _StreamBroken from exc
        await response.write_eof()
        ex.entry.update(bytesOut=sent, usage=tap.usage(), finishReasons=tap.finish_reasons())
        return response


def _plugin_spans(ex: Exchange) -> list[SpanRecord]:
    """One child span per plugin hook call, from the chain's own timings."""
    if ex.chain is None:
        return []
    spans = []
    for plugin, hook, started, ended, error in ex.chain.timings:
        spans.append(
            SpanRecord(
                f"plugin {plugin} {hook}",
                os.urandom(8),
                ex.trace.server_span,
                ex.started_ns + int((started - ex.started) * 1e9),
                ex.started_ns + int((ended - ex.started) * 1e9),
                SpanKind.INTERNAL,
                {"wardgate.plugin": plugin, "wardgate.plugin.hook": hook},
                error=error,
            )
        )
    return spans


def _server_attributes(entry: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes of the server span: HTTP, identity, decision, and GenAI conventions."""
    decision = entry.get("decision") or {}
    usage = entry.get("usage") or {}
    return {
        "http.request.method": entry.get("method"),
        "url.path": entry.get("path"),
        "server.address": entry.get("host"),
        "http.response.status_code": entry.get("status"),
        "client.address": entry.get("remote"),
        "wardgate.request_id": entry.get("requestId"),
        "wardgate.listener": entry.get("listener"),
        "wardgate.service": entry.get("service"),
        "wardgate.config": entry.get("config"),
        "wardgate.user": entry.get("user"),
        "wardgate.session": entry.get("session"),
        "wardgate.session_type": entry.get("sessionType"),
        "wardgate.decision.effect": decision.get("effect"),
        "wardgate.decision.reason": decision.get("reason"),
        "wardgate.decision.policy": decision.get("policy"),
        "gen_ai.request.model": entry.get("model"),
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "gen_ai.response.finish_reasons": entry.get("finishReasons"),
    }


def _decision_entry(decision: Decision) -> dict[str, Any]:
    entry: dict[str, Any] = {"effect": decision.effect.value, "reason": decision.reason.value}
    if decision.rule is not None:
        entry.update(policy=decision.rule.policy, rule=decision.rule.rule)
    if decision.detail:
        entry["detail"] = decision.detail
    return entry
