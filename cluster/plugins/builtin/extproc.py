"""ExtProc: the Envoy external-processing protocol (`envoy.service.ext_proc.v3`) as a client.

One bidirectional `Process` stream per request, bounded by the plugin's timeout:

    request_headers ─▶ (immediate_response ─▶ answer) | (headers response ─▶ apply header/body mutation)
    request_body    ─▶ (immediate_response ─▶ answer) | (body response    ─▶ apply header/body mutation)

The body goes out (buffered, one message, `end_of_stream`) only with `sendBody` and a non-empty body,
and not after a CONTINUE_AND_REPLACE. Anything else (timeout, reset, a reply to the wrong message) is
an error, which fails the request closed unless the plugin entry sets `failOpen`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from multidict import CIMultiDict

from wardgate.cluster.plugins.flow import HttpFlow, Response
from wardgate.cluster.resources.service import ExtProcPluginSpec

_UNSETTABLE = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})
_ACTION = core.HeaderValueOption.HeaderAppendAction


class ExtProcError(Exception):
    """The external processor failed, timed out, or broke the protocol."""


def _path_of(value: str) -> tuple[str, str]:
    path, _, query = value.partition("?")
    if not path.startswith("/") or any(s in (".", "..") for s in path.split("/")) or "\\" in path:
        raise ExtProcError(f"the processor set an invalid :path {value!r}")
    return path, query


def _header_map(flow: HttpFlow) -> core.HeaderMap:
    request = flow.request
    http = flow.ctx.get("request", {}).get("http", {})
    path = request.path + ("?" + request.query if request.query else "")
    pseudo = [(":method", request.method), (":path", path), (":scheme", "https")]
    pseudo.append((":authority", str(http.get("host", ""))))
    values = [core.HeaderValue(key=k, raw_value=v.encode("latin-1")) for k, v in pseudo]
    values.extend(core.HeaderValue(key=k.lower(), raw_value=v.encode("latin-1")) for k, v in request.headers.items())
    return core.HeaderMap(headers=values)


def _apply_headers(flow: HttpFlow, headers: CIMultiDict[str], mutation: Any, request: bool) -> None:
    for name in mutation.remove_headers:
        if not name.startswith(":") and name.lower() not in _UNSETTABLE:
            headers.popall(name, None)
    for option in mutation.set_headers:
        key = option.header.key
        value = option.header.raw_value.decode("latin-1") if option.header.raw_value else option.header.value
        if any(c in value for c in "\r\n\x00") or not key:
            raise ExtProcError(f"the processor set an invalid header {key!r}")
        if key == ":path" and request:
            flow.request.path, flow.request.query = _path_of(value)
            continue
        if key.startswith(":") or key.lower() in _UNSETTABLE:
            continue
        if option.HasField("append"):
            action = _ACTION.APPEND_IF_EXISTS_OR_ADD if option.append.value else _ACTION.OVERWRITE_IF_EXISTS_OR_ADD
        else:
            action = option.append_action
        exists = key in headers
        if action == _ACTION.APPEND_IF_EXISTS_OR_ADD or (action == _ACTION.ADD_IF_ABSENT and not exists):
            headers.add(key, value)
        elif action == _ACTION.OVERWRITE_IF_EXISTS_OR_ADD or (action == _ACTION.OVERWRITE_IF_EXISTS and exists):
            headers[key] = value


def _apply_common(flow: HttpFlow, common: Any) -> bool:
    """Apply a CommonResponse to the request; True when it was CONTINUE_AND_REPLACE."""
    if common.HasField("header_mutation"):
        _apply_headers(flow, flow.request.headers, common.header_mutation, request=True)
    if common.HasField("body_mutation"):
        which = common.body_mutation.WhichOneof("mutation")
        if which == "body":
            flow.request.body = common.body_mutation.body
        elif which == "clear_body" and common.body_mutation.clear_body:
            flow.request.body = b""
        elif which is not None:
            raise ExtProcError(f"unsupported body mutation {which}")
    return bool(common.status == pb.CommonResponse.CONTINUE_AND_REPLACE)


def _answer(flow: HttpFlow, immediate: Any) -> None:
    status = immediate.status.code if immediate.HasField("status") else 200
    if not 200 <= status <= 599:
        raise ExtProcError(f"immediate response with invalid status {status}")
    response = Response(int(status), CIMultiDict(), bytes(immediate.body))
    if immediate.HasField("headers"):
        _apply_headers(flow, response.headers, immediate.headers, request=False)
    flow.response = response


class ExtProc:
    """Sends the request to an external processor and applies what it answers."""

    Config = ExtProcPluginSpec

    def __init__(self, name: str, config: ExtProcPluginSpec) -> None:
        self.name = name
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _processor(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.config.address)
            self._stub = pb_grpc.ExternalProcessorStub(self._channel)
        return self._stub

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def request(self, flow: HttpFlow) -> None:
        call = self._processor().Process(timeout=self.config.timeout)
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._exchange(call, flow)
        except TimeoutError as exc:
            raise ExtProcError(f"{self.config.address} did not answer within {self.config.timeout:g}s") from exc
        except grpc.aio.AioRpcError as exc:
            raise ExtProcError(f"{self.config.address}: {exc.code().name}: {exc.details()}") from exc
        finally:
            call.cancel()

    async def _exchange(self, call: Any, flow: HttpFlow) -> None:
        send_body = self.config.send_body and bool(flow.request.body)
        headers = pb.HttpHeaders(headers=_header_map(flow), end_of_stream=not send_body)
        reply = await self._roundtrip(call, flow, pb.ProcessingRequest(request_headers=headers), "request_headers")
        if reply is None or _apply_common(flow, reply.request_headers.response) or not send_body:
            return
        body = pb.HttpBody(body=flow.request.body, end_of_stream=True)
        reply = await self._roundtrip(call, flow, pb.ProcessingRequest(request_body=body), "request_body")
        if reply is not None:
            _apply_common(flow, reply.request_body.response)

    async def _roundtrip(self, call: Any, flow: HttpFlow, message: Any, expected: str) -> Any:
        """The processor's reply to `message`, or None when it answered the request itself."""
        await call.write(message)
        reply = await call.read()
        if reply is grpc.aio.EOF:
            raise ExtProcError(f"{self.config.address} closed the stream instead of answering {expected}")
        which = reply.WhichOneof("response")
        if which == "immediate_response":
            _answer(flow, reply.immediate_response)
            return None
        if which != expected:
            raise ExtProcError(f"{self.config.address} answered {expected} with {which or 'an empty message'}")
        return reply
