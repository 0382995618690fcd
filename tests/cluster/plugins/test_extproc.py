"""The ExtProc client against a real grpc.aio ExternalProcessor built from the same protos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from tests.cluster.plugins.helpers import make_flow
from wardgate.cluster.plugins.builtin.extproc import ExtProc, ExtProcError
from wardgate.cluster.plugins.manager import Entry, PluginChain, PluginError
from wardgate.cluster.policy.engine import EvalInput
from wardgate.cluster.resources.service import ExtProcPluginSpec


def _set(key: str, value: str, **kw: Any) -> core.HeaderValueOption:
    return core.HeaderValueOption(header=core.HeaderValue(key=key, raw_value=value.encode()), **kw)


class Processor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Behaves as `mode` says; records what it received."""

    def __init__(self) -> None:
        self.mode = "mutate"
        self.seen: list[Any] = []

    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for message in requests:
            self.seen.append(message)
            kind = message.WhichOneof("request")
            if self.mode == "hang":
                await asyncio.sleep(30)
            if self.mode == "reset":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "processor going away")
            if self.mode == "eof":
                return
            if self.mode == "garbage":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                continue
            if self.mode == "immediate":
                yield pb.ProcessingResponse(
                    immediate_response=pb.ImmediateResponse(
                        status=http_status_pb2.HttpStatus(code=403),
                        headers=pb.HeaderMutation(set_headers=[_set("x-why", "policy")]),
                        body=b"denied by processor",
                    )
                )
                continue
            if kind == "request_headers":
                mutation = pb.HeaderMutation(
                    set_headers=[
                        _set("x-added", "1"),
                        _set("x-multi", "two", append_action=core.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
                        _set(":path", "/v2/rewritten?q=1"),
                        _set("host", "evil.example"),
                    ],
                    remove_headers=["x-drop"],
                )
                yield pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
                )
            elif kind == "request_body":
                body = pb.BodyMutation(body=b'{"replaced":true}')
                yield pb.ProcessingResponse(
                    request_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=body))
                )


@pytest.fixture
async def processor() -> AsyncIterator[tuple[Processor, str]]:
    server = grpc.aio.server()
    servicer = Processor()
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def make(address: str, **options: Any) -> ExtProc:
    return ExtProc("proc", ExtProcPluginSpec.model_validate({"address": address, **options}))


async def test_header_and_body_mutations(processor: tuple[Processor, str]) -> None:
    servicer, address = processor
    plugin = await make(address)
    flow = make_flow(body=b'{"a":1}', path="/v1/chat", headers={"x-drop": "gone", "x-multi": "one"})
    try:
        await plugin.request(flow)
    finally:
        await plugin.aclose()
    assert flow.response is None
    assert flow.request.headers["x-added"] == "1"
    assert flow.request.headers.getall("x-multi") == ["one", "two"]
    assert "x-drop" not in flow.request.headers
    assert "host" not in flow.request.headers
    assert (flow.request.path, flow.request.query) == ("/v2/rewritten", "q=1")
    assert flow.request.body == b'{"replaced":true}'
    headers = {h.key: h.raw_value for h in servicer.seen[0].request_headers.headers.headers}
    assert headers[":method"] == b"POST" and headers[":path"] == b"/v1/chat" and headers["x-drop"] == b"gone"
    assert not servicer.seen[0].request_headers.end_of_stream
    assert servicer.seen[1].request_body.body == b'{"a":1}' and servicer.seen[1].request_body.end_of_stream


async def test_no_body_means_end_of_stream_on_headers(processor: tuple[Processor, str]) -> None:
    servicer, address = processor
    plugin = await make(address)
    flow = make_flow(body=b"")
    await plugin.request(flow)
    await plugin.aclose()
    assert len(servicer.seen) == 1 and servicer.seen[0].request_headers.end_of_stream


async def test_immediate_response_answers(processor: tuple[Processor, str]) -> None:
    servicer, address = processor
    servicer.mode = "immediate"
    plugin = await make(address)
    flow = make_flow(body=b"{}")
    await plugin.request(flow)
    await plugin.aclose()
    assert flow.response is not None
    assert flow.response.status == 403 and flow.response.body == b"denied by processor"
    assert flow.response.headers["x-why"] == "policy"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("hang", "did not answer within"),
        ("reset", "UNAVAILABLE"),
        ("garbage", "answered request_headers with response_headers"),
        ("eof", "closed the stream"),
    ],
)
async def test_failures_fail_closed_and_the_next_request_works(
    processor: tuple[Processor, str], mode: str, message: str
) -> None:
    servicer, address = processor
    servicer.mode = mode
    plugin = await make(address, timeout="300ms")
    chain = PluginChain([Entry("proc", plugin)])
    flow = make_flow(body=b"{}")
    with pytest.raises(PluginError, match=message):
        await chain.begin(EvalInput({})).request(flow)
    assert flow.response is None
    servicer.mode = "mutate"
    flow = make_flow(body=b"{}")
    await chain.begin(EvalInput({})).request(flow)
    assert flow.request.headers["x-added"] == "1"
    await plugin.aclose()


async def test_hang_with_fail_open_goes_on_unmodified(processor: tuple[Processor, str]) -> None:
    servicer, address = processor
    servicer.mode = "hang"
    plugin = await make(address, timeout="200ms")
    chain = PluginChain([Entry("proc", plugin, fail_open=True)])
    flow = make_flow(body=b'{"a":1}')
    run = chain.begin(EvalInput({}))
    await run.request(flow)
    await plugin.aclose()
    assert flow.response is None and flow.request.body == b'{"a":1}'
    assert "did not answer" in run.notes[0]


async def test_unreachable_processor_fails_closed() -> None:
    plugin = await make("127.0.0.1:1", timeout="500ms")
    with pytest.raises(ExtProcError):
        await plugin.request(make_flow())
    await plugin.aclose()
