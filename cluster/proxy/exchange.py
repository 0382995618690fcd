"""Exchange: one proxied request as it moves through the gateway: the client's request, the state it was
decided with, the admission, the plugin run, and the access record and spans it leaves behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from wardgate.cluster.authorize.admit import Admission
from wardgate.cluster.authorize.facts import RequestFacts
from wardgate.cluster.authorize.resilience import Endpoint
from wardgate.cluster.authorize.state import GatewayState, Route
from wardgate.cluster.errors import Refused
from wardgate.cluster.observability.otlp import SpanKind, SpanRecord, TraceContext
from wardgate.cluster.observability.record import AccessRecord, DecisionRecord
from wardgate.cluster.plugins.flow import HttpFlow
from wardgate.cluster.plugins.manager import ChainRun
from wardgate.cluster.policy.engine import Decision
from wardgate.cluster.proxy.llm import ResponseTap
from wardgate.cluster.usage.meter import Metering


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    """An error body OpenAI-compatible SDKs understand (the gateway's clients are mostly LLM SDKs)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def decision_record(decision: Decision) -> DecisionRecord:
    rule = decision.rule
    return DecisionRecord(
        decision.effect.value,
        decision.reason.value,
        rule.policy if rule is not None else None,
        rule.rule if rule is not None else None,
        decision.detail,
    )


class BodyFilter(Protocol):
    """Rewrites an upstream answer on its way to the client (MCP: list results filtered per caller)."""

    def head(self, status: int, content_type: str) -> tuple[int, str | None]:
        """The status and Content-Type the client gets (None: the upstream's)."""
        ...

    async def feed(self, chunk: bytes) -> bytes: ...

    async def flush(self) -> bytes: ...


@dataclass(slots=True)
class Exchange:
    request: web.BaseRequest
    host: str
    record: AccessRecord
    trace: TraceContext
    request_id: str = field(default_factory=lambda: os.urandom(16).hex())
    started: float = field(default_factory=time.perf_counter)
    started_ns: int = field(default_factory=time.time_ns)
    spans: list[SpanRecord] = field(default_factory=list)
    state: GatewayState | None = None
    admission: Admission | None = None
    origin: str | None = None
    flow: HttpFlow | None = None
    chain: ChainRun | None = None
    facts: RequestFacts | None = None
    """The request as admitted (normalised path, the body as read): fallbacks replay it, never a copy."""
    metering: Metering | None = None
    """Quota accounting and the usage ledger (cluster/usage/meter.py; proxy/metering.py drives it)."""
    tap: ResponseTap | None = None
    """What the upstream answered, as usage sees it (set by the relay; read when the exchange ends)."""
    strip_usage: bool = False
    """The gateway asked for stream usage the client did not: the tap takes that chunk out."""
    body_filter: BodyFilter | None = None
    """Rewrites the upstream's answer (no Content-Length then; the upstream is asked for no encoding)."""
    pinned: Endpoint | None = None
    """The one endpoint this request must go to (an MCP session lives on the replica that created it)."""
    answered: Callable[[Endpoint, Mapping[str, str]], None] | None = None
    """Called with the endpoint and its headers when an upstream answers, before the client sees the answer
    (MCP pins the session an endpoint created before the client can use it)."""
    upstream_headers: dict[str, str] = field(default_factory=dict)
    """Request headers the upstream gets instead of the client's (MCP: the upstream's own session id)."""
    answer_headers: dict[str, str] = field(default_factory=dict)
    """Headers the client's answer gets instead of the upstream's, set by `answered` (MCP: the gateway's
    sealed session id in place of the upstream's)."""
    more_lines: list[dict[str, Any]] = field(default_factory=list)
    """Fields of further access-log lines, each the record plus these (an MCP batch: one per call)."""
    traced: bool = True
    """An exporter sends this exchange's spans; without one, `span` builds none."""

    @property
    def route(self) -> Route:
        assert self.admission is not None and self.admission.route is not None
        return self.admission.route

    def refuse(self, refused: Refused, reason: str, message: str | None = None) -> web.Response:
        """The refusal's response; `reason` goes to the access log only."""
        self.record.reason = reason
        response = openai_error(refused.status, message or refused.message, refused.kind, refused.code)
        response.headers["x-request-id"] = self.request_id
        return response

    def span(
        self,
        name: str,
        started: float,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        span_id: bytes | None = None,
    ) -> None:
        """A child of the server span from `started` (perf_counter) to now (kept only when `traced`)."""
        if not self.traced:
            return
        record = SpanRecord(
            name,
            span_id or os.urandom(8),
            self.trace.server_span,
            self._ns(started),
            self._ns(time.perf_counter()),
            kind,
            attributes,
        )
        self.spans.append(record)

    def _ns(self, at: float) -> int:
        return self.started_ns + int((at - self.started) * 1e9)

    def plugin_spans(self) -> list[SpanRecord]:
        """One child span per plugin hook call, from the chain's own timings."""
        if self.chain is None:
            return []
        return [
            SpanRecord(
                f"plugin {plugin} {hook}",
                os.urandom(8),
                self.trace.server_span,
                self._ns(started),
                self._ns(ended),
                SpanKind.INTERNAL,
                {"wardgate.plugin": plugin, "wardgate.plugin.hook": hook},
                error=error,
            )
            for plugin, hook, started, ended, error in self.chain.timings
        ]


def server_attributes(record: AccessRecord) -> dict[str, Any]:
    """OpenTelemetry attributes of the server span: HTTP, identity, decision, and GenAI conventions."""
    decision = record.decision
    usage = record.usage or {}
    return {
        "http.request.method": record.method,
        "url.path": record.path,
        "server.address": record.host,
        "http.response.status_code": record.status,
        "client.address": record.remote,
        "wardgate.request_id": record.request_id,
        "wardgate.listener": record.listener,
        "wardgate.service": record.service,
        "wardgate.config": record.config,
        "wardgate.user": record.user,
        "wardgate.session": record.session,
        "wardgate.session_type": record.session_type,
        "wardgate.decision.effect": decision.effect if decision else None,
        "wardgate.decision.reason": decision.reason if decision else None,
        "wardgate.decision.policy": decision.policy if decision else None,
        "gen_ai.request.model": record.model,
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "gen_ai.response.finish_reasons": record.finish_reasons,
    }
