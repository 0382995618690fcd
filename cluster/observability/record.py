"""AccessRecord: what one finished request was, typed; the access log, the metrics and the OTLP export all
read it (the JSON line's keys are camelCase, unset fields are left out). Never bodies, tokens or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    effect: str
    reason: str
    policy: str | None = None
    rule: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"effect": self.effect, "reason": self.reason}
        if self.policy is not None:
            out.update(policy=self.policy, rule=self.rule)
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class PluginFailure:
    plugin: str
    hook: str
    kind: str


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try of the upstream: its config, endpoint (host:port), status (None: no answer), how long it took,
    why it ended (`answered`, `status 503`, `connect`, `timeout`, `reset`, `first token timeout`, `skipped: ...`),
    and the wait before the next try."""

    config: str
    endpoint: str | None
    status: int | None
    duration_ms: float
    reason: str
    wait_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config,
            "endpoint": self.endpoint,
            "status": self.status,
            "durationMs": self.duration_ms,
            "reason": self.reason,
            "waitMs": self.wait_ms,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class QuotaRecord:
    """The Quota that decided: `refused` (429: its `measure` and `window`), `unavailable` (503: its counters
    could not be reached, failMode closed) or `fail-open` (let through unchecked, failMode open)."""

    name: str
    measure: str | None
    window: str | None
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "measure": self.measure, "window": self.window, "outcome": self.outcome}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(slots=True)
class AccessRecord:
    """Filled in as the request goes; `finish` stamps status and duration."""

    listener: str
    method: str
    path: str
    host: str | None = None
    remote: str | None = None
    node: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    event: str | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    status: int = 500
    duration_ms: float | None = None
    service: str | None = None
    user: str | None = None
    session: str | None = None
    session_type: str | None = None
    credential: str | None = None
    config: str | None = None
    decision: DecisionRecord | None = None
    reason: str | None = None
    redirect: str | None = None
    notes: list[str] = field(default_factory=list)
    plugins: list[str] | None = None
    plugin_failures: list[PluginFailure] = field(default_factory=list)
    answered_by: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    upstream_first_byte_ms: float | None = None
    usage: dict[str, Any] | None = None
    usage_estimated: bool | None = None
    """True when the gateway counted the tokens (the provider reported none, or the client left first)."""
    cost: float | None = None
    """In the Pricing currency, when a Pricing names the model."""
    quota: QuotaRecord | None = None
    finish_reasons: list[str] | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    """Every try of the upstream, in order (retries and fallbacks included)."""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Endpoint-specific fields of the cluster's own endpoints (e.g. the login's identity provider)."""

    def finish(self, status: int, duration_s: float) -> None:
        self.status = status
        self.duration_ms = round(duration_s * 1000, 3)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the access-log line (and the OTLP log record's attributes)."""
        out: dict[str, Any] = {
            "time": self.time,
            "requestId": self.request_id,
            "traceId": self.trace_id,
            "node": self.node,
            "listener": self.listener,
            "event": self.event,
            "remote": self.remote,
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "service": self.service,
            "user": self.user,
            "session": self.session,
            "sessionType": self.session_type,
            "credential": self.credential,
            "config": self.config,
            "decision": self.decision.as_dict() if self.decision is not None else None,
            "reason": self.reason,
            "redirect": self.redirect,
            "notes": self.notes or None,
            "plugins": self.plugins,
            "pluginFailures": [
                {"plugin": f.plugin, "hook": f.hook, "kind": f.kind} for f in self.plugin_failures
            ]
            or None,
            "answeredBy": self.answered_by,
            "model": self.model,
            "upstreamModel": self.upstream_model,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "upstreamStatus": self.upstream_status,
            "upstreamMs": self.upstream_ms,
            "upstreamFirstByteMs": self.upstream_first_byte_ms,
            "usage": self.usage,
            "usageEstimated": self.usage_estimated,
            "cost": self.cost,
            "quota": self.quota.as_dict() if self.quota is not None else None,
            "finishReasons": self.finish_reasons,
            "attempts": [a.as_dict() for a in self.attempts] or None,
            "error": self.error,
            **self.extra,
            "status": self.status,
            "durationMs": self.duration_ms,
        }
        return {k: v for k, v in out.items() if v is not None}
