"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC, keeping what it receives."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def attributes(values: Any) -> dict[str, Any]:
    """KeyValue list to a plain dict (nested kvlists and arrays included)."""

    def plain(v: common_pb2.AnyValue) -> Any:
        which = v.WhichOneof("value")
        if which == "kvlist_value":
            return attributes(v.kvlist_value.values)
        if which == "array_value":
            return [plain(x) for x in v.array_value.values]
        return getattr(v, which) if which else None

    return {kv.key: plain(kv.value) for kv in values}


@dataclass
class Received:
    spans: list[trace_pb2.Span] = field(default_factory=list)
    logs: list[logs_pb2.LogRecord] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    def take_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            self.resources.append(attributes(rs.resource.attributes))
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)

    def take_logs(self, request: logs_service_pb2.ExportLogsServiceRequest) -> None:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                self.logs.extend(sl.log_records)


@contextlib.asynccontextmanager
async def serve_http(received: Received) -> AsyncIterator[str]:
    async def traces(request: web.Request) -> web.Response:
        received.take_traces(trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def logs(request: web.Request) -> web.Response:
        received.take_logs(logs_service_pb2.ExportLogsServiceRequest.FromString(await request.read()))
        return web.Response(
            body=logs_service_pb2.ExportLogsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/logs", logs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(self, request: Any, context: Any) -> Any:
        self._received.take_traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(self, request: Any, context: Any) -> Any:
        self._received.take_logs(request)
        return logs_service_pb2.ExportLogsServiceResponse()


@contextlib.asynccontextmanager
async def serve_grpc(received: Received) -> AsyncIterator[str]:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(received), server)  # type: ignore[no-untyped-call]
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(received), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
