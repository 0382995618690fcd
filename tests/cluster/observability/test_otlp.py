"""The OTLP exporter against a real receiver (HTTP and gRPC), and its behaviour with no collector."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import free_port
from tests.fakes.otlp_receiver import Received, attributes, serve_grpc, serve_http
from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.observability.otlp import Exporter, SpanKind, SpanRecord, TelemetrySettings, new_trace


def _record(exporter: Exporter, n: int) -> None:
    for i in range(n):
        trace = new_trace(None, False)
        now = time.time_ns()
        spans = [
            SpanRecord(
                "POST /v1/chat/completions",
                trace.server_span,
                None,
                now,
                now + 1000,
                SpanKind.SERVER,
                {"wardgate.user": "alice", "gen_ai.request.model": "gpt-4o"},
            ),
            SpanRecord(
                "upstream",
                trace.child_id(),
                trace.server_span,
                now + 10,
                now + 900,
                SpanKind.CLIENT,
                error="boom" if i == 0 else None,
            ),
        ]
        exporter.record(trace, spans, {"status": 200 + 300 * (i == 0), "user": "alice", "requestId": str(i)})


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_and_logs_reach_a_real_receiver(protocol: str) -> None:
    received = Received()
    serve = serve_http if protocol == "http/protobuf" else serve_grpc
    async with serve(received) as endpoint:
        exporter = Exporter(TelemetrySettings(otlp_endpoint=endpoint, protocol=protocol, interval=0.05), "node-a")
        exporter.start()
        _record(exporter, 3)
        for _ in range(100):
            if len(received.spans) == 6 and len(received.logs) == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(exporter.close)
    assert len(received.spans) == 6 and len(received.logs) == 3
    server = received.spans[0]
    assert server.kind == SpanKind.SERVER.value and attributes(server.attributes)["gen_ai.request.model"] == "gpt-4o"
    child = received.spans[1]
    assert child.parent_span_id == server.span_id and child.trace_id == server.trace_id
    assert child.status.message == "boom"
    assert received.resources[0]["service.name"] == "wardgate" and received.resources[0]["host.name"] == "node-a"
    first_log = received.logs[0]
    assert attributes(first_log.attributes)["status"] == 500 and first_log.severity_text == "ERROR"
    assert first_log.trace_id == server.trace_id


async def test_collector_down_drops_and_counts_without_blocking() -> None:
    metrics = Metrics()
    settings = TelemetrySettings(
        otlp_endpoint=f"http://127.0.0.1:{free_port()}", interval=0.05, timeout=0.5, queue_size=16
    )
    exporter = Exporter(settings, "node-a", on_drop=metrics.drop)
    exporter.start()
    started = time.perf_counter()
    _record(exporter, 200)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05, elapsed
    await asyncio.sleep(1.0)
    await asyncio.to_thread(exporter.close)
    text = metrics.render().decode()
    dropped_logs = next(
        line for line in text.splitlines() if line.startswith('wardgate_telemetry_dropped_total{signal="logs"}')
    )
    assert float(dropped_logs.split()[-1]) == 200


def test_traceparent_is_honoured_only_when_trusted() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trusted = new_trace(incoming, True)
    assert trusted.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" and trusted.parent == bytes.fromhex(
        "00f067aa0ba902b7"
    )
    untrusted = new_trace(incoming, False)
    assert untrusted.trace_id.hex() != "4bf92f3577b34da6a3ce929d0e0e4736" and untrusted.parent is None
    for bad in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "01-4bf9-00-01"):
        assert new_trace(bad, True).parent is None
    assert trusted.traceparent(trusted.server_span).startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
