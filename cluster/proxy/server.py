"""The gateway: one handler for every `<service>.<domain>` request, on the public and the tunnel listener.

    Host ─▶ Service in the current state (404 if unknown, or not public on the public listener)
    ─▶ CORS preflight? ─▶ identify (the listener's strategy: bearer token or cookie; or tunnel address)
    ─▶ read body (the Service's limit) ─▶ admit(state, caller, facts) (authorize/admit.py: parse, dynamic
       config, policies; Admission or Refusal)
    ─▶ plugins' request phase on an HttpFlow (a plugin may answer: no upstream then)
    ─▶ upstream (upstream.py: identity headers stripped, secret injected, relay or buffer for plugins)
    ─▶ one access record (log, metrics, OTLP)
Requests for the bare `<domain>` (token endpoint, discovery, login) go to the cluster's own endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from wardgate.cluster.authorize.admit import Admission, Caller, Refusal, admit
from wardgate.cluster.authorize.facts import RequestFacts, normalize_path
from wardgate.cluster.authorize.state import GatewayState, ServicePipeline
from wardgate.cluster.errors import Refused, Unauthenticated
from wardgate.cluster.identity.authenticate import Authenticator, Identity, session_cookie
from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.observability.otlp import Exporter, SpanKind, SpanRecord, new_trace
from wardgate.cluster.observability.record import AccessRecord, PluginFailure
from wardgate.cluster.plugins.flow import HttpFlow
from wardgate.cluster.plugins.flow import Request as FlowRequest
from wardgate.cluster.plugins.manager import PluginError
from wardgate.cluster.policy.context import TooManyValues, parse_body_map
from wardgate.cluster.proxy import cors
from wardgate.cluster.proxy import mcp as mcp_mode
from wardgate.cluster.proxy.exchange import Exchange, decision_record, server_attributes
from wardgate.cluster.proxy.headers import upstream_request_headers
from wardgate.cluster.proxy.llm import request_model
from wardgate.cluster.proxy.mcp_metrics import McpCallMetrics
from wardgate.cluster.proxy.mcp_servers import McpServers
from wardgate.cluster.proxy.metering import begin as begin_metering
from wardgate.cluster.proxy.metering import gate as quota_gate
from wardgate.cluster.proxy.metering import settle as settle_usage
from wardgate.cluster.proxy.revocation import LiveConnections
from wardgate.cluster.proxy.upstream import StreamBroken, Upstream, UpstreamRefused, complete
from wardgate.cluster.usage.meter import Meter

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Identify = Callable[[web.BaseRequest], Identity]
"""A listener's identification strategy: the caller of a request, or Unauthenticated (its text: why)."""
MAX_HOST_LENGTH = 253
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
"""Never proxied: TRACE would echo the injected upstream credentials back; CONNECT opens a raw tunnel."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Where a finished request's record goes besides the access log: metrics and OTLP."""

    metrics: Metrics
    exporter: Exporter


def bearer_or_cookie(authenticator: Authenticator) -> Identify:
    """The public listener's strategy: `Authorization: Bearer <token>`, else the browser session cookie."""

    def identify(request: web.BaseRequest) -> Identity:
        authorization = request.headers.get("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("Authorization is not `Bearer <token>`")
            if not token.isascii() or not token.isprintable():
                raise Unauthenticated("malformed bearer token")
            # A token issued for one MCP Service (RFC 8707 `resource`) is good only at that Service's endpoint.
            host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
            resource = mcp_mode.origin("https", host, request.host or "") + mcp_mode.ENDPOINT
            return authenticator.from_token(token, resource)
        cookie = session_cookie(request.headers.getall("Cookie", ()))
        if cookie:
            return authenticator.from_token(cookie)
        raise Unauthenticated("no credentials")

    return identify


@dataclass(frozen=True, slots=True)
class Listener:
    """What differs between the public and the tunnel listener."""

    name: str
    scheme: str
    public_only: bool
    identify: Identify
    login_url: Callable[[], str | None] = lambda: None
    unauthenticated: Refused = Refused.UNAUTHENTICATED
    unauthenticated_message: str | None = None


class Gateway:
    """The request handler of a listener (an aiohttp low-level handler)."""

    def __init__(
        self,
        *,
        domain: str,
        listener: Listener,
        state: Callable[[], GatewayState],
        upstream: Upstream,
        access_log: AccessLog,
        site: Handler,
        node: str,
        telemetry: Telemetry | None = None,
        live: LiveConnections | None = None,
        meter: Meter | None = None,
        mcp_sessions: SealedValues,
    ) -> None:
        self._meter = meter
        self._domain = domain
        self._suffix = "." + domain
        self._listener = listener
        self._state = state
        self._upstream = upstream
        self._log = access_log
        self._site = site
        self._node = node
        self._telemetry = telemetry
        self._live = live
        self._mcp = mcp_mode.McpGateway(
            mcp_sessions,
            McpServers(upstream.client, mcp_sessions),
            McpCallMetrics(telemetry.metrics if telemetry else None),
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        if not (host.isascii() and host.isprintable()):
            host = ""  # bytes that are not a host name (not UTF-8: surrogates) never reach the record or a log
        if host == self._domain:
            return await self._site(request)
        telemetry = self._telemetry
        trust = telemetry is not None and telemetry.exporter.settings.trust_incoming_traceparent
        trace = new_trace(request.headers.get("traceparent"), trust)
        record = AccessRecord(
            self._listener.name, request.method, request.path, host[:MAX_HOST_LENGTH], request.remote, self._node
        )
        ex = Exchange(request, host, record, trace, traced=telemetry is not None and telemetry.exporter.enabled)
        record.request_id, record.trace_id = ex.request_id, trace.trace_id.hex()
        status = 500
        try:
            response = await self._handle(ex)
            status = response.status
            return response
        except StreamBroken:
            status = record.upstream_status or 502
            record.error = record.error or "upstream stream broken"
            raise
        except asyncio.CancelledError:
            record.error = "client disconnected"
            status = 499
            raise
        finally:
            self._finish(ex, status)

    def malformed(self, request: web.BaseRequest, status: int, reason: str) -> None:
        """The access-log line of a request the listener could not parse (listener.py answers it)."""
        record = AccessRecord(self._listener.name, "-", "-", None, request.remote, self._node, reason=reason)
        record.finish(status, 0.0)
        self._log.write(record)

    def _finish(self, ex: Exchange, status: int) -> None:
        record = ex.record
        total = time.perf_counter() - ex.started
        record.finish(status, total)
        settle_usage(ex)
        self._log.write(record)
        for fields in ex.more_lines:
            self._log.write({**record.as_dict(), **fields})
        if self._telemetry is not None:
            # Metrics and spans are read later (a scrape, a batched export): taken once the answer has left
            # (aiohttp sends a whole answer when the handler returns), they no longer delay it (about 45 µs at
            # c=1 on bench/gateway.py's empty pipeline). The access-log line, with usage and cost, stays first.
            asyncio.get_running_loop().call_soon(self._observe, self._telemetry, ex, status, total)

    @staticmethod
    def _observe(telemetry: Telemetry, ex: Exchange, status: int, total: float) -> None:
        record = ex.record
        telemetry.metrics.observe(record)
        if telemetry.exporter.enabled:
            server = SpanRecord(
                f"{record.method} {record.service or '-'}",
                ex.trace.server_span,
                ex.trace.parent,
                ex.started_ns,
                ex.started_ns + int(total * 1e9),
                SpanKind.SERVER,
                server_attributes(record),
                error=f"HTTP {status}" if status >= 500 else None,
            )
            telemetry.exporter.record(ex.trace, [server, *ex.spans, *ex.plugin_spans()], record.as_dict())

    def _service(self, state: GatewayState, host: str) -> ServicePipeline | None:
        name = host[: -len(self._suffix)] if host.endswith(self._suffix) else ""
        pipe = state.services.get(name) if name and "." not in name else None
        if pipe is None or (self._listener.public_only and not pipe.service.spec.is_public):
            return None
        return pipe

    def _unauthenticated(self, ex: Exchange, reason: str, mcp: bool = False) -> web.StreamResponse:
        request, login = ex.request, self._listener.login_url()
        if login is not None and request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            ex.record.reason, ex.record.redirect = reason, "login"
            target = f"https://{request.host}{request.rel_url}"
            return web.Response(status=302, headers={"Location": login + "?" + urlencode({"rd": target})})
        response = ex.refuse(self._listener.unauthenticated, reason, self._listener.unauthenticated_message)
        if response.status == 401 and mcp:
            where = mcp_mode.origin(self._listener.scheme, ex.host, request.host or "")
            response.headers["WWW-Authenticate"] = mcp_mode.challenge(where, self._domain)
        elif response.status == 401:
            response.headers["WWW-Authenticate"] = f'Bearer realm="{self._domain}"'
        return response

    @staticmethod
    async def _read_body(request: web.BaseRequest, limit: int) -> bytes | None:
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size, content = 0, request.content
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _handle(self, ex: Exchange) -> web.StreamResponse:
        request, record = ex.request, ex.record
        if request.method in REFUSED_METHODS:
            return ex.refuse(Refused.METHOD_NOT_ALLOWED, f"{request.method} is never proxied")
        if not ex.host:
            return ex.refuse(Refused.BAD_REQUEST, "no Host, or one that is not a host name")
        state = ex.state = self._state()
        pipe = self._service(state, ex.host)
        if pipe is None:
            return ex.refuse(Refused.UNKNOWN_SERVICE, "unknown host")
        record.service = pipe.name
        is_mcp = pipe.service.spec.mode == "MCP"
        if is_mcp and request.method == "GET" and request.path == mcp_mode.METADATA_PATH:
            record.reason = "mcp: protected resource metadata"
            where = mcp_mode.origin(self._listener.scheme, ex.host, request.host or "")
            authorization_server = mcp_mode.origin(self._listener.scheme, self._domain, request.host or "")
            return mcp_mode.metadata(where, authorization_server, pipe.name)
        cors_config = pipe.default.config.http.cors if pipe.default is not None else None
        ex.origin = request.headers.get("Origin")
        if cors_config is not None and ex.origin and cors.is_preflight(request):
            record.reason = "cors preflight"
            return cors.preflight(cors_config, ex.origin)
        try:
            identity = self._listener.identify(request)
        except Unauthenticated as exc:
            return self._unauthenticated(ex, str(exc), is_mcp)
        record.user = identity.user.metadata.name
        record.session = identity.session.metadata.name if identity.session else None
        record.session_type = identity.session.spec.type.value if identity.session else "CLIENTLESS"
        record.credential = identity.credential.metadata.name if identity.credential else None
        if self._live is not None:
            # From here until its connection closes, revoking this identity ends the connection.
            self._live.track(request.transport, record.user, record.session, record.credential)
        if normalize_path(request.rel_url.raw_path) is None:
            return ex.refuse(Refused.BAD_PATH, "encoded '/' or '\\', '\\' or encoded NUL in the path")
        body = await self._read_body(request, pipe.max_request_bytes)
        if body is None:
            return ex.refuse(Refused.TOO_LARGE, "request body over the limit")
        facts = RequestFacts.of(
            request.method,
            request.rel_url,
            request.headers,
            host=ex.host,
            scheme=self._listener.scheme,
            ip=request.remote or "",
            body=body,
        )
        ex.facts = facts
        started = time.perf_counter()
        usage = None if self._meter is None else await begin_metering(ex, self._meter, state, pipe.name, identity)
        caller = Caller.of(identity)
        if is_mcp:
            return await self._mcp.handle(ex, state, pipe, caller, facts, usage, self._proceed)
        if state.needs_rego(pipe, caller.user):
            # Rego evaluates in C for as long as its time limit allows: keep it off the event loop (the
            # decision is a pure function of immutable state, so a thread may make it).
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(None, admit, state, caller, facts, pipe.name, usage)
        else:
            outcome = admit(state, caller, facts, pipe.name, usage)
        record.bytes_in = len(body)
        record.notes.extend(outcome.notes)
        if isinstance(outcome, Refusal):
            record.config = outcome.config
            if outcome.decision is not None:
                record.decision = decision_record(outcome.decision)
                self._authorize_span(ex, started)
            return ex.refuse(outcome.refused, outcome.reason)
        ex.admission = outcome
        record.config = ex.route.name
        record.model = request_model(outcome.body_map)
        record.decision = decision_record(outcome.decision)
        self._authorize_span(ex, started)
        refused = await quota_gate(ex, outcome.body_map)
        if refused is not None:
            return refused
        return await self._proceed(ex, outcome, ex.facts or facts)

    @staticmethod
    def _authorize_span(ex: Exchange, started: float) -> None:
        decision = ex.record.decision
        assert decision is not None
        if not ex.traced:
            return
        ex.span("authorize", started, {f"wardgate.decision.{k}": v for k, v in decision.as_dict().items()})

    async def _proceed(self, ex: Exchange, admission: Admission, facts: RequestFacts) -> web.StreamResponse:
        route, url = ex.route, ex.request.rel_url
        passed = route.config.http.header.pass_identity_headers
        headers = upstream_request_headers(ex.request.headers, route.remove_request_headers, passed)
        for name, value in route.add_request_headers:
            headers[name] = value
        headers.update(ex.upstream_headers)
        # The path the rules judged (normalised once, in RequestFacts) is the path the upstream gets.
        outgoing = FlowRequest(ex.request.method, facts.raw_path, url.raw_query_string, headers, facts.body)
        state = ex.state
        assert state is not None
        try:
            if not route.plugins:
                return await self._upstream.forward(ex, state, outgoing, None)
            return await self._plugins(ex, admission, state, outgoing)
        except UpstreamRefused as exc:
            if exc.refused is not Refused.UPSTREAM_TIMEOUT and exc.refused is not Refused.UPSTREAM_UNREACHABLE:
                log.error("service %s: %s", ex.record.service, exc.reason)
            return ex.refuse(exc.refused, exc.reason)
        except PluginError as exc:
            return self._plugin_failed(ex, exc)

    async def _plugins(
        self, ex: Exchange, admission: Admission, state: GatewayState, outgoing: FlowRequest
    ) -> web.StreamResponse:
        route, record = ex.route, ex.record
        flow = ex.flow = HttpFlow(record.service or "", ex.request_id, outgoing, admission.inp.ctx)
        run = ex.chain = route.plugins.begin(admission.inp)
        record.plugins = list(route.plugins.names)
        original = outgoing.body
        try:
            await run.request(flow)
        finally:
            record.notes.extend(run.notes)
        if flow.request.body is not original and flow.request.body != original:
            try:
                changed = request_model(parse_body_map(flow.request.body, flow.request.headers.get("Content-Type", "")))
            except TooManyValues:
                changed = None
            if changed != record.model:
                record.upstream_model = changed
        if flow.response is None:
            return await self._upstream.forward(ex, state, flow.request, run)
        record.answered_by = run.answered_by
        flow.response.headers.extend(route.add_response_headers)
        await run.response_headers(flow)
        if run.wants_response_body:
            await run.response(flow)
        return complete(ex, flow.response, run.answered_by)

    @staticmethod
    def _plugin_failed(ex: Exchange, exc: PluginError) -> web.Response:
        detail = exc.detail.lower()
        kind = "timeout" if "time" in detail or "instruction" in detail else "error"
        ex.record.plugin_failures.append(PluginFailure(exc.plugin, exc.hook, kind))
        log.error("service %s: %s; failing the request closed", ex.record.service, exc)
        return ex.refuse(Refused.PLUGIN_FAILED, str(exc))
