"""The gateway for a Service in `mode: MCP`: every JSON-RPC call decided on its own, the answers filtered.

The flow:

    identified caller, body read ─▶ `/mcp` only (and `/.well-known/oauth-protected-resource`, before
    identification) ─▶ POST: parse (mcp_rpc.py; not JSON-RPC: a parse error, nothing forwarded);
    GET (listen) / DELETE (end session): one transport call ─▶ admit each call with `ctx.request.mcp`
    ─▶ a refused call becomes a JSON-RPC error with the reason; nothing left: answered here
    ─▶ the allowed calls go upstream (the Gateway's own path: plugins, the Service's secret, never the
    caller's credential), to the endpoint holding the `Mcp-Session-Id` (the client's is sealed: SessionPins);
    list results filtered per caller
    ─▶ one access-log line per call: method, name, decision (never arguments or results); per-tool
    metrics (mcp_metrics.py)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from wardgate.cluster.authorize.admit import Admission, Caller, Refusal, admit
from wardgate.cluster.authorize.facts import RequestFacts
from wardgate.cluster.authorize.resilience import Endpoint
from wardgate.cluster.authorize.state import GatewayState, ServicePipeline
from wardgate.cluster.errors import Refused
from wardgate.cluster.identity.sealed import SealedError, SealedValues
from wardgate.cluster.proxy.exchange import Exchange, decision_record
from wardgate.cluster.proxy.mcp_metrics import McpCallMetrics
from wardgate.cluster.proxy.mcp_rpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    TRANSPORT,
    Call,
    Malformed,
    ResponseFilter,
    denial,
    error,
    forwarded,
    parse,
)
from wardgate.cluster.proxy.mcp_servers import SESSION_TTL_SECONDS, McpServers
from wardgate.cluster.proxy.metering import gate as quota_gate

ENDPOINT = "/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource"
SESSION_HEADER = "Mcp-Session-Id"

Proceed = Callable[[Exchange, Admission, RequestFacts], Awaitable[web.StreamResponse]]
"""The Gateway's path from an admission to the upstream (plugins, then the upstream call)."""


def origin(scheme: str, host: str, request_host: str) -> str:
    """`scheme://host[:port]` as the client addressed it (`host` is the checked name; only a numeric port
    is taken from the Host header, and not the scheme's default)."""
    port = request_host.rpartition(":")[2] if ":" in request_host else ""
    default = (scheme, port) in (("https", "443"), ("http", "80"))
    return f"{scheme}://{host}" + (f":{port}" if port.isdigit() and not default else "")


def challenge(service_origin: str, realm: str) -> str:
    """`WWW-Authenticate` of a 401 from an MCP Service (RFC 9728 §5.1: where its metadata is)."""
    return f'Bearer realm="{realm}", resource_metadata="{service_origin}{METADATA_PATH}"'


def metadata(service_origin: str, authorization_server: str, service: str) -> web.Response:
    """OAuth 2.0 Protected Resource Metadata (RFC 9728) of an MCP Service: the resource is its MCP endpoint,
    Wardgate (`<authorization_server>/.well-known/oauth-authorization-server`) issues its tokens."""
    body = {
        "resource": service_origin + ENDPOINT,
        "authorization_servers": [authorization_server],
        "bearer_methods_supported": ["header"],
        "resource_name": service,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


@dataclass(frozen=True, slots=True)
class Pin:
    """What the client's `Mcp-Session-Id` stands for: the user, the endpoint that created the session, and
    the upstream's own session id."""

    user: str
    endpoint: str
    session: str


class SessionPins:
    """The client sees a sealed Pin as its `Mcp-Session-Id` (identity.sealed, bound to the Service, 24 h), so
    that every worker of every node pins the session to its endpoint and its user, none remembering it."""

    def __init__(self, sealed: SealedValues) -> None:
        self._sealed = sealed

    def seal(self, service: str, pin: Pin) -> str:
        value = {"user": pin.user, "endpoint": pin.endpoint, "session": pin.session}
        return self._sealed.seal(value, service, SESSION_TTL_SECONDS)

    def open(self, service: str, sid: str) -> tuple[Pin | None, str]:
        """The Pin `sid` stands for, or None and why it does not open."""
        try:
            value = self._sealed.open(sid, service)
        except SealedError as exc:
            return None, exc.reason
        user, endpoint, session = (value.get(k) for k in ("user", "endpoint", "session"))
        if not (isinstance(user, str) and isinstance(endpoint, str) and isinstance(session, str)):
            return None, "sealed value is not a session of a one-upstream Service"
        return Pin(user, endpoint, session), ""


def _rpc(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class McpGateway:
    """Decides and forwards the requests of MCP Services for one Gateway. `sessions` seals the session ids
    clients see; `servers` speaks to the servers of Services with several (`upstream.mcpServers`); without it
    such a Service answers 502. `metrics` counts the calls per tool."""

    def __init__(
        self, sessions: SealedValues, servers: McpServers | None = None, metrics: McpCallMetrics | None = None
    ) -> None:
        self.pins = SessionPins(sessions)
        self._servers = servers
        self._metrics = metrics or McpCallMetrics(None)

    async def handle(
        self,
        ex: Exchange,
        state: GatewayState,
        pipe: ServicePipeline,
        caller: Caller,
        facts: RequestFacts,
        usage: Mapping[str, Any] | None,
        proceed: Proceed,
    ) -> web.StreamResponse:
        record, method = ex.record, ex.request.method
        if facts.path != ENDPOINT:
            return ex.refuse(Refused.NO_ROUTE, f"an MCP Service answers on {ENDPOINT} only")
        record.bytes_in = len(facts.body)
        batch = False
        if method == "POST":
            try:
                calls, batch = parse(facts.body)
            except Malformed as exc:
                record.reason = f"mcp: {exc}"
                code = PARSE_ERROR if str(exc) == "not JSON" else INVALID_REQUEST
                return _rpc(error(None, code, f"Invalid JSON-RPC: {exc}"), 400)
        elif method in ("GET", "DELETE"):
            calls = [TRANSPORT]
        else:
            return ex.refuse(Refused.METHOD_NOT_ALLOWED, f"{method} on an MCP endpoint")
        decide = self._decider(state, caller, facts, pipe, usage)
        outcomes = [await decide(call) for call in calls]
        allowed: list[tuple[Call, Admission]] = []
        denied: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, Refusal) and outcome.refused is not Refused.FORBIDDEN:
                record.notes.extend(outcome.notes)
                record.config = outcome.config
                return ex.refuse(outcome.refused, outcome.reason)
            decision = outcome.decision
            assert decision is not None
            lines.append({**call.log(), "decision": decision.effect.value, "reason": decision.reason.value})
            self._metrics.count(pipe.name, call.method or method, call.name, decision.effect.value)
            if isinstance(outcome, Admission):
                allowed.append((call, outcome))
            elif call.is_request:
                denied.append(denial(call, decision.reason.value))
        record.extra["mcp"] = lines[0]
        ex.more_lines.extend({"mcp": line} for line in lines[1:])
        first = allowed[0][1] if allowed else outcomes[0]
        assert first.decision is not None
        record.decision = decision_record(first.decision)
        if not allowed:
            return self._refused_all(ex, calls, denied, batch)
        admission = allowed[0][1]
        ex.admission = admission
        record.config = ex.route.name
        refused = await quota_gate(ex, admission.body_map)
        if refused is not None:
            return refused
        sent = [call for call, _ in allowed]
        may = self._may(state, caller, facts, pipe, usage)
        started = time.perf_counter()
        if ex.route.config.upstream.mcp_servers:
            response = await self._several(ex, state, pipe.name, caller.user, sent, denied, batch, may)
        else:
            response = await self._one(
                ex, admission, pipe.name, caller.user, facts, calls, sent, denied, batch, may, proceed
            )
        if len(calls) == 1:
            call = calls[0]
            self._metrics.timed(pipe.name, call.method or method, call.name, time.perf_counter() - started)
        return response

    async def _one(
        self,
        ex: Exchange,
        admission: Admission,
        service: str,
        user: str,
        facts: RequestFacts,
        calls: list[Call],
        sent: list[Call],
        denied: list[dict[str, Any]],
        batch: bool,
        may: Callable[[list[tuple[str, str]]], Awaitable[list[bool]]],
        proceed: Proceed,
    ) -> web.StreamResponse:
        """A Service with one MCP upstream: the Gateway's path, its session pinned to the endpoint and user."""
        method, record = ex.request.method, ex.record
        body = forwarded(calls, sent, batch, facts.body) if method == "POST" else facts.body
        rewrite = ResponseFilter.of(sent, denied, batch, may) if method == "POST" else None
        ex.body_filter = rewrite if rewrite is not None and rewrite.needed else None
        session = ex.request.headers.get(SESSION_HEADER)
        pin: Pin | None = None
        if session:
            pin, why = self.pins.open(service, session)
            if pin is None or pin.user != user:
                record.reason = (
                    f"mcp: session id refused ({why})" if pin is None else "mcp: the session belongs to another user"
                )
                return _rpc(error(None, INVALID_REQUEST, "Session not found"), 404)
            ex.pinned = _endpoint(ex, pin.endpoint)
            ex.upstream_headers[SESSION_HEADER] = pin.session

        def answered(endpoint: Endpoint, headers: Mapping[str, str]) -> None:
            # The upstream's own session id never reaches the client: it gets the sealed one standing for it.
            created = headers.get(SESSION_HEADER)
            if not created:
                return
            if session and pin is not None and created == pin.session:
                ex.answer_headers[SESSION_HEADER] = session
            else:
                ex.answer_headers[SESSION_HEADER] = self.pins.seal(service, Pin(user, endpoint.url, created))

        ex.answered = answered
        return await proceed(ex, admission, replace(facts, body=body, raw_path=""))

    async def _several(
        self,
        ex: Exchange,
        state: GatewayState,
        service: str,
        user: str,
        sent: list[Call],
        denied: list[dict[str, Any]],
        batch: bool,
        may: Callable[[list[tuple[str, str]]], Awaitable[list[bool]]],
    ) -> web.StreamResponse:
        """A Service with several MCP servers: mcp_servers.py answers (plugins do not run there)."""
        if self._servers is None:
            return ex.refuse(Refused.UPSTREAM_UNREACHABLE, "mcp: this listener cannot reach several servers")
        config = ex.route.config
        timeouts = config.http.timeouts
        response, note = await self._servers.handle(
            service=service,
            user=user,
            servers=config.upstream.mcp_servers,
            auth=config.http.auth,
            secrets_=state.secrets,
            request=ex.request,
            messages=[call.message for call in sent if call.message is not None],
            denied=denied,
            batch=batch,
            may=may,
            timeouts=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read),
        )
        if response.status >= 400:
            ex.record.reason = ex.record.reason or note
        ex.record.upstream_status = response.status
        return response

    def _refused_all(self, ex: Exchange, calls: list[Call], denied: list[dict[str, Any]], batch: bool) -> web.Response:
        ex.record.reason = "mcp: every call denied by policy"
        if ex.request.method != "POST":
            return ex.refuse(Refused.FORBIDDEN, "mcp: denied by policy")
        if not denied:
            return web.Response(status=202)  # only notifications (or responses): nothing to answer
        ex.record.bytes_out = len(orjson.dumps(denied))
        return _rpc(denied if batch else denied[0])

    @staticmethod
    def _decider(
        state: GatewayState,
        caller: Caller,
        facts: RequestFacts,
        pipe: ServicePipeline,
        usage: Mapping[str, Any] | None,
    ) -> Callable[[Call], Awaitable[Admission | Refusal]]:
        rego = state.needs_rego(pipe, caller.user)

        async def decide(call: Call) -> Admission | Refusal:
            if rego:
                # Rego runs in C for as long as its limit allows: off the event loop, as for HTTP requests.
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, admit, state, caller, facts, pipe.name, usage, call.ctx())
            return admit(state, caller, facts, pipe.name, usage, call.ctx())

        return decide

    def _may(
        self,
        state: GatewayState,
        caller: Caller,
        facts: RequestFacts,
        pipe: ServicePipeline,
        usage: Mapping[str, Any] | None,
    ) -> Callable[[list[tuple[str, str]]], Awaitable[list[bool]]]:
        """Whether listed items are shown: each decided as the call of it with empty arguments."""
        rego = state.needs_rego(pipe, caller.user)
        metrics = self._metrics

        def decide(calls: list[tuple[str, str]]) -> list[bool]:
            return [
                isinstance(
                    admit(state, caller, facts, pipe.name, usage, {"method": m, "name": n, "arguments": {}}), Admission
                )
                for m, n in calls
            ]

        async def may(calls: list[tuple[str, str]]) -> list[bool]:
            metrics.learn(pipe.name, calls)  # what the upstream listed: the names per-tool metrics may use
            if rego:  # a page of a list may be many decisions: off the event loop, as every Rego decision
                return await asyncio.get_running_loop().run_in_executor(None, decide, calls)
            return decide(calls)

        return may


def _endpoint(ex: Exchange, url: str | None) -> Endpoint | None:
    if url is None:
        return None
    return next((e for e in ex.route.endpoints if e.url == url), None)
