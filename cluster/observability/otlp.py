"""OpenTelemetry export without the SDK on the request path: the proxy records plain span and log
records into a bounded queue (never blocking, counting what it drops), and one background thread
turns them into OTLP protobuf batches and sends them over HTTP or gRPC.

    request path ─▶ TraceContext (ids, traceparent) ─▶ record(spans, log entry) ─▶ deque(maxlen)
    exporter thread ─▶ ExportTraceServiceRequest / ExportLogsServiceRequest ─▶ collector
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TelemetrySettings(BaseModel):
    """`[telemetry]` in cluster.toml. No endpoint: nothing is exported (metrics still work)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    otlp_endpoint: str | None = None
    """`http://host:4318` for OTLP/HTTP (paths /v1/traces and /v1/logs are added) or `host:4317` for gRPC."""
    protocol: str = Field(default="http/protobuf", pattern="^(http/protobuf|grpc)$")
    service_name: str = "wardgate"
    trust_incoming_traceparent: bool = False
    """Use a client's W3C `traceparent` as the parent. Off: clients cannot graft spans onto other traces."""
    queue_size: int = Field(default=8192, ge=16, le=1_000_000)
    batch_size: int = Field(default=512, ge=1, le=10_000)
    interval: float = Field(default=1.0, gt=0, le=60)
    timeout: float = Field(default=5.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)


class SpanKind(IntEnum):
    INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
    SERVER = trace_pb2.Span.SPAN_KIND_SERVER
    CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass(slots=True)
class SpanRecord:
    name: str
    span_id: bytes
    parent_id: bytes | None
    start_ns: int
    end_ns: int
    kind: SpanKind = SpanKind.INTERNAL
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(slots=True)
class TraceContext:
    """The ids of one request's trace: `server_span` is the gateway's span, `parent` the caller's."""

    trace_id: bytes
    server_span: bytes
    parent: bytes | None
    sampled: bool = True

    def child_id(self) -> bytes:
        return os.urandom(8)

    def traceparent(self, span_id: bytes) -> str:
        return f"00-{self.trace_id.hex()}-{span_id.hex()}-{'01' if self.sampled else '00'}"


def new_trace(incoming: str | None, trust_incoming: bool) -> TraceContext:
    if trust_incoming and incoming:
        match = _TRACEPARENT.match(incoming.strip().lower())
        if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
            return TraceContext(
                bytes.fromhex(match.group(1)),
                os.urandom(8),
                bytes.fromhex(match.group(2)),
                bool(int(match.group(3), 16) & 1),
            )
    return TraceContext(os.urandom(16), os.urandom(8), None)


def _any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_any_value(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=_attributes(value)))
    return common_pb2.AnyValue(string_value=str(value))


def _attributes(values: Mapping[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_any_value(v)) for k, v in values.items() if v is not None]


@dataclass(slots=True)
class _Item:
    trace: TraceContext
    spans: list[SpanRecord]
    entry: dict[str, Any]
    time_ns: int


class Exporter:
    """Bounded, non-blocking OTLP export. `record` never waits; drops are counted in `on_drop`."""

    def __init__(
        self, settings: TelemetrySettings, node: str, on_drop: Callable[[str, int], None] = lambda s, n: None
    ) -> None:
        self.settings = settings
        self._on_drop = on_drop
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._resource = resource_pb2.Resource(
            attributes=_attributes(
                {
                    "service.name": settings.service_name,
                    "host.name": node,
                    "service.instance.id": f"{node}-{os.getpid()}",
                }
            )
        )
        self._scope = common_pb2.InstrumentationScope(name="wardgate.proxy")
        self._thread: threading.Thread | None = None
        self._send = self._http_sender() if settings.protocol == "http/protobuf" else self._grpc_sender()

    @property
    def enabled(self) -> bool:
        return self.settings.otlp_endpoint is not None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout + 1)

    def record(self, trace: TraceContext, spans: list[SpanRecord], entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._queue) >= self.settings.queue_size:
                dropped = True
            else:
                self._queue.append(_Item(trace, spans, entry, time.time_ns()))
                dropped = False
                if len(self._queue) >= self.settings.batch_size:
                    self._wake.set()
        if dropped:
            self._on_drop("traces", len(spans))
            self._on_drop("logs", 1)

    def _take(self) -> list[_Item]:
        with self._lock:
            count = min(len(self._queue), self.settings.batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.settings.interval)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._export(batch)

    def _export(self, batch: list[_Item]) -> None:
        traces = trace_service_pb2.ExportTraceServiceRequest(
            resource_spans=[
                trace_pb2.ResourceSpans(
                    resource=self._resource,
                    scope_spans=[
                        trace_pb2.ScopeSpans(
                            scope=self._scope, spans=[self._span(item.trace, s) for item in batch for s in item.spans]
                        )
                    ],
                )
            ]
        )
        logs = logs_service_pb2.ExportLogsServiceRequest(
            resource_logs=[
                logs_pb2.ResourceLogs(
                    resource=self._resource,
                    scope_logs=[logs_pb2.ScopeLogs(scope=self._scope, log_records=[self._log(item) for item in batch])],
                )
            ]
        )
        span_count = sum(len(item.spans) for item in batch)
        for signal, message, count in (("traces", traces, span_count), ("logs", logs, len(batch))):
            try:
                self._send(signal, message)
            except Exception as exc:
                log.warning("OTLP %s export failed (%d dropped): %s", signal, count, exc)
                self._on_drop(signal, count)

    @staticmethod
    def _span(trace: TraceContext, record: SpanRecord) -> trace_pb2.Span:
        status = trace_pb2.Status(
            code=trace_pb2.Status.STATUS_CODE_ERROR if record.error else trace_pb2.Status.STATUS_CODE_UNSET,
            message=record.error or "",
        )
        return trace_pb2.Span(
            trace_id=trace.trace_id,
            span_id=record.span_id,
            parent_span_id=record.parent_id or b"",
            name=record.name,
            kind=trace_pb2.Span.SpanKind.ValueType(record.kind.value),
            start_time_unix_nano=record.start_ns,
            end_time_unix_nano=record.end_ns,
            attributes=_attributes(record.attributes),
            status=status,
            flags=0x100 | (1 if trace.sampled else 0),
        )

    @staticmethod
    def _log(item: _Item) -> logs_pb2.LogRecord:
        status = item.entry.get("status", 0)
        severity = (
            logs_pb2.SEVERITY_NUMBER_ERROR
            if isinstance(status, int) and status >= 500
            else (
                logs_pb2.SEVERITY_NUMBER_WARN
                if isinstance(status, int) and status >= 400
                else logs_pb2.SEVERITY_NUMBER_INFO
            )
        )
        return logs_pb2.LogRecord(
            time_unix_nano=item.time_ns,
            observed_time_unix_nano=item.time_ns,
            severity_number=severity,
            severity_text=logs_pb2.SeverityNumber.Name(severity).removeprefix("SEVERITY_NUMBER_"),
            body=common_pb2.AnyValue(string_value="access"),
            event_name="wardgate.access",
            attributes=_attributes({k: v for k, v in item.entry.items() if k != "time"}),
            trace_id=item.trace.trace_id,
            span_id=item.trace.server_span,
        )

    def _http_sender(self) -> Callable[[str, Any], None]:
        base = (self.settings.otlp_endpoint or "").rstrip("/")

        def send(signal: str, message: Any) -> None:
            request = urllib.request.Request(
                f"{base}/v1/{signal}",
                data=message.SerializeToString(),
                method="POST",
                headers={"Content-Type": "application/x-protobuf", **self.settings.headers},
            )
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                if response.status >= 300:
                    raise OSError(f"collector answered {response.status}")

        return send

    def _grpc_sender(self) -> Callable[[str, Any], None]:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        target = (self.settings.otlp_endpoint or "").removeprefix("http://").removeprefix("grpc://")
        channel = grpc.insecure_channel(target)
        metadata = tuple(self.settings.headers.items())
        calls: dict[str, Any] = {
            "traces": trace_service_pb2_grpc.TraceServiceStub(channel).Export,  # type: ignore[no-untyped-call]
            "logs": logs_service_pb2_grpc.LogsServiceStub(channel).Export,  # type: ignore[no-untyped-call]
        }

        def send(signal: str, message: Any) -> None:
            calls[signal](message, timeout=self.settings.timeout, metadata=metadata)

        return send
