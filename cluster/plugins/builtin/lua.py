"""Lua plugins: `onRequest(ctx)` / `onResponse(ctx)` in a sandboxed, pooled Lua 5.4 (lupa) runtime.

    build:    LuaPlugin(spec) ─▶ one runtime made now (script compiled and run; errors surface here)
    request:  pool.acquire() ─▶ coroutine(onRequest) with a count hook ─▶ step ─┬▶ done / exit
                                                     ▲                         └▶ http call: await, resume
                                                     └───────────────────────────┘
              ─▶ answer (exit / setResponseBody / setStatusCode) into flow.response ─▶ pool.release()

Bounds per call: `maxInstructions` (count hook every HOOK_EVERY instructions; API calls are charged
by size), `timeLimit` of script time (HTTP waits excluded), `maxMemory` for the runtime. A runtime
that failed in any way is discarded, never reused. This is the only module that imports lupa;
the sandbox itself is built in Lua by lua_prelude.PRELUDE.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
import fastjsonschema
import lupa.lua54 as lupa
import orjson
from multidict import CIMultiDict

from cluster.plugins.builtin.lua_http import HttpPolicyError, LuaHttp
from cluster.plugins.builtin.lua_prelude import PRELUDE
from cluster.plugins.flow import HttpFlow, Response
from cluster.resources.service import LuaPluginSpec

HOOK_EVERY = 1000
MAX_DEPTH = 128
_INF = float("inf")
_NAME_LINE = re.compile(r"^[^:\n]*:(\d+): (.*)$", re.S)
_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade", b"te"})
_REQUEST, _RESPONSE, _LOAD = "request", "response", "load"


class LuaScriptError(Exception):
    """A script failed to compile, raised an error, or exceeded a bound (the message says which)."""


class _BoundExceeded(Exception):
    pass


def _deny_attributes(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError("Python attributes are not accessible from Lua")


def _where(message: str) -> str:
    """`safety:12: msg` -> `line 12: msg` (the chunk name is the plugin's, already in the log line)."""
    match = _NAME_LINE.match(message)
    return f"line {match.group(1)}: {match.group(2)}" if match else message


def _text(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise LuaScriptError(f"{what} must be a string")
    return value


def _header_name(value: object) -> str:
    name = _text(value, "a header name")
    if not _HEADER_NAME.match(name):
        raise LuaScriptError(f"invalid header name {name!r}")
    if name.lower() in _FRAMING_HEADERS:
        raise LuaScriptError(f"header {name.decode()!r} is managed by the gateway")
    return name.decode()


def _header_value(value: object) -> str:
    raw = _text(value, "a header value")
    if any(c in raw for c in b"\r\n\x00"):
        raise LuaScriptError("a header value may not contain CR, LF or NUL")
    return raw.decode("latin-1")


def _status(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise LuaScriptError(f"status must be an integer from 100 to 599, got {value!r}")
    return value


def _check_path(path: bytes) -> str:
    text = path.decode("latin-1")
    lowered = text.lower()
    if not text.startswith("/") or not text.isascii() or any(c in text for c in "?# \\\t\r\n\x00"):
        raise LuaScriptError(f"setPath: {text!r} must be an absolute path without query or fragment")
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise LuaScriptError(f"setPath: {text!r} has an encoded separator")
    if any(s in (".", "..") for s in lowered.replace("%2e", ".").split("/")):
        raise LuaScriptError(f"setPath: {text!r} has '.' or '..' segments")
    return text


_schemas: collections.OrderedDict[str, Callable[[Any], Any]] = collections.OrderedDict()


def _schema_validator(schema: str) -> Callable[[Any], Any]:
    """Compiled validators, cached by the schema's hash (scripts pass the same schema every call)."""
    key = hashlib.sha256(schema.encode()).hexdigest()
    found = _schemas.get(key)
    if found is None:
        try:
            found = fastjsonschema.compile(orjson.loads(schema))
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaDefinitionException) as exc:
            raise LuaScriptError(f"json.isSchemaValid: invalid schema: {exc}") from exc
        _schemas[key] = found
        if len(_schemas) > 256:
            _schemas.popitem(last=False)
    else:
        _schemas.move_to_end(key)
    return found


class _Runtime:
    """One sandboxed Lua state with the script loaded. One call at a time; it holds that call's state."""

    def __init__(self, name: str, spec: LuaPluginSpec, http: LuaHttp) -> None:
        self.name = name
        self.spec = spec
        self.http = http
        self.lua = lupa.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            encoding=None,
            attribute_filter=_deny_attributes,
            max_memory=spec.max_memory,
        )
        self.flow: HttpFlow | None = None
        self.phase = _LOAD
        self.units = 0
        self.deadline = 0.0
        self.left = 0.0
        self.bound: str | None = None
        self.answered = False
        self.answer_status: int | None = None
        self.answer_body: bytes | None = None
        self.header_edits: list[tuple[str, str | None]] = []
        prelude = self.lua.execute(PRELUDE, self._api())
        # Look the driver functions up once, by bytes key (the runtime has no string encoding).
        self.compile, self.freeze, self.entry = (prelude[k] for k in (b"compile", b"freeze", b"entry"))
        self.start, self.resume, self.stop = (prelude[k] for k in (b"start", b"step", b"stop"))
        self.mark_array, self.kind = prelude[b"array"], prelude[b"kind"]
        compiled = self.compile(spec.inline.encode(), name.encode())
        if isinstance(compiled, tuple):
            raise LuaScriptError(_where(compiled[1].decode(errors="replace")))
        chunk = compiled
        self._load(chunk)
        self.freeze()
        self.on_request = self.entry(b"onRequest")
        self.on_response = self.entry(b"onResponse")
        if self.on_request is None and self.on_response is None:
            raise LuaScriptError("the script defines neither onRequest nor onResponse")

    def _api(self) -> Any:
        req = {
            b"getRequestBody": self.get_body,
            b"setRequestBody": self.set_body,
            b"getRequestHeader": self.get_header,
            b"setRequestHeader": self.set_header,
            b"deleteRequestHeader": self.delete_header,
            b"getPath": self.get_path,
            b"setPath": self.set_path,
            b"getMethod": self.get_method,
            b"getQueryParam": self.get_query,
            b"setQueryParam": self.set_query,
            b"deleteQueryParam": self.delete_query,
            b"setResponseBody": self.answer_with_body,
            b"setResponseHeader": self.edit_response_header,
            b"deleteResponseHeader": self.delete_response_header,
            b"setStatusCode": self.answer_with_status,
        }
        resp = {
            b"getResponseBody": self.resp_get_body,
            b"setResponseBody": self.resp_set_body,
            b"getResponseCode": self.resp_get_code,
            b"getResponseHeader": self.resp_get_header,
            b"setResponseHeader": self.edit_response_header,
            b"deleteResponseHeader": self.delete_response_header,
            b"setStatusCode": self.resp_set_status,
        }
        api = {
            b"hook_every": HOOK_EVERY,
            b"tick": self.tick,
            b"exhausted": lambda: self.bound is not None,
            b"exit": self.exit,
            b"ctx": self.ctx,
            b"req": self.lua.table_from(req),
            b"resp": self.lua.table_from(resp),
            b"json_decode": self.json_decode,
            b"json_encode": self.json_encode,
            b"json_schema_valid": self.json_schema_valid,
            b"base64_encode": lambda s: base64.b64encode(_text(s, "base64.encode's argument")),
            b"base64_decode": self.base64_decode,
            b"strings_len": lambda s: len(_text(s, "s").decode("utf-8", "surrogateescape")),
            b"strings_lower": lambda s: self._unicode(s, str.lower),
            b"strings_upper": lambda s: self._unicode(s, str.upper),
            b"strings_trim": self.strings_trim,
            b"strings_split": self.strings_split,
            b"lower_ascii": lambda s: _text(s, "s").lower(),
            b"http_base": self.http_base,
        }
        return self.lua.table_from(api)

    # -- bounds ---------------------------------------------------------------------------------------

    def begin(self, flow: HttpFlow | None, phase: str) -> None:
        self.flow, self.phase = flow, phase
        self.units = self.spec.max_instructions
        self.left = self.spec.time_limit
        self.bound = None
        self.answered, self.answer_status, self.answer_body = False, None, None
        self.header_edits = []

    def resume_clock(self) -> None:
        self.deadline = time.perf_counter() + self.left

    def pause_clock(self) -> None:
        self.left = self.deadline - time.perf_counter()

    def tick(self) -> bool:
        self.units -= HOOK_EVERY
        if self.units < 0:
            self.bound = f"instruction limit ({self.spec.max_instructions}) exceeded"
        elif time.perf_counter() > self.deadline:
            self.bound = f"time limit ({self.spec.time_limit:g}s) exceeded"
        return self.bound is None

    def charge(self, units: int) -> None:
        """Work done in Python on the script's behalf counts against its instruction budget."""
        self.units -= units
        if not self.tick():
            raise _BoundExceeded(self.bound)

    # -- driving a call ---------------------------------------------------------------------------------

    def step(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        self.resume_clock()
        try:
            result = self.resume(*args)
        except lupa.LuaMemoryError as exc:
            raise LuaScriptError(f"memory limit ({self.spec.max_memory} bytes) exceeded") from exc
        except lupa.LuaError as exc:
            raise LuaScriptError(self.bound or str(exc)) from exc
        finally:
            self.pause_clock()
        out = result if isinstance(result, tuple) else (result,)
        if out[0] == b"error":
            if self.bound is not None:
                raise LuaScriptError(self.bound)
            message = out[1].decode(errors="replace")
            if message == "not enough memory":
                message = f"memory limit ({self.spec.max_memory} bytes) exceeded"
            raise LuaScriptError(_where(message))
        return out

    def _load(self, chunk: Any) -> None:
        self.begin(None, _LOAD)
        self.start(chunk, False)
        kind = self.step(())[0]
        self.stop()
        if kind != b"done":
            raise LuaScriptError("the script's top level may not call exit or http (only onRequest/onResponse)")

    def too_big(self) -> bool:
        used: int = self.lua.get_memory_used()
        return used > self.spec.max_memory // 2

    # -- the wardgate.req / wardgate.resp API --------------------------------------------------------------

    def _flow(self, *phases: str) -> HttpFlow:
        if self.flow is None or self.phase not in phases:
            allowed = " or ".join("onRequest" if p == _REQUEST else "onResponse" for p in phases)
            raise LuaScriptError(f"only available in {allowed}")
        return self.flow

    def _response(self) -> Response:
        response = self._flow(_RESPONSE).response
        assert response is not None
        return response

    def get_body(self) -> bytes:
        return self._flow(_REQUEST, _RESPONSE).request.body

    def set_body(self, body: object) -> None:
        self._flow(_REQUEST).request.body = _text(body, "the body")

    def get_header(self, name: object) -> bytes | None:
        value = self._flow(_REQUEST, _RESPONSE).request.headers.get(_text(name, "a header name").decode("latin-1"))
        return None if value is None else value.encode("latin-1")

    def set_header(self, name: object, value: object) -> None:
        self._flow(_REQUEST).request.headers[_header_name(name)] = _header_value(value)

    def delete_header(self, name: object) -> None:
        self._flow(_REQUEST).request.headers.popall(_header_name(name), None)

    def get_path(self) -> bytes:
        return self._flow(_REQUEST, _RESPONSE).request.path.encode("latin-1")

    def set_path(self, path: object) -> None:
        self._flow(_REQUEST).request.path = _check_path(_text(path, "the path"))

    def get_method(self) -> bytes:
        return self._flow(_REQUEST, _RESPONSE).request.method.encode()

    def _query(self) -> list[tuple[str, str]]:
        return parse_qsl(self._flow(_REQUEST, _RESPONSE).request.query, keep_blank_values=True)

    def get_query(self, name: object) -> bytes | None:
        key = _text(name, "a query parameter").decode("utf-8", "replace")
        return next((v.encode() for k, v in self._query() if k == key), None)

    def set_query(self, name: object, value: object) -> None:
        key = _text(name, "a query parameter").decode("utf-8", "replace")
        pairs = [(k, v) for k, v in self._query() if k != key]
        pairs.append((key, _text(value, "a query value").decode("utf-8", "replace")))
        self._flow(_REQUEST).request.query = urlencode(pairs, quote_via=quote)

    def delete_query(self, name: object) -> None:
        key = _text(name, "a query parameter").decode("utf-8", "replace")
        self._flow(_REQUEST).request.query = urlencode([(k, v) for k, v in self._query() if k != key], quote_via=quote)

    def answer_with_body(self, body: object) -> None:
        self._flow(_REQUEST)
        self.answered, self.answer_body = True, _text(body, "the response body")

    def answer_with_status(self, status: object) -> None:
        self._flow(_REQUEST)
        self.answered, self.answer_status = True, _status(status)

    def exit(self, status: object) -> None:
        self._flow(_REQUEST)
        self.answered, self.answer_status = True, _status(status)

    def edit_response_header(self, name: object, value: object) -> None:
        if self._flow(_REQUEST, _RESPONSE) and self.phase == _RESPONSE:
            self._response().headers[_header_name(name)] = _header_value(value)
        else:
            self.header_edits.append((_header_name(name), _header_value(value)))

    def delete_response_header(self, name: object) -> None:
        if self._flow(_REQUEST, _RESPONSE) and self.phase == _RESPONSE:
            self._response().headers.popall(_header_name(name), None)
        else:
            self.header_edits.append((_header_name(name), None))

    def resp_get_body(self) -> bytes:
        return self._response().body or b""

    def resp_set_body(self, body: object) -> None:
        self._response().body = _text(body, "the response body")

    def resp_get_code(self) -> int:
        return self._response().status

    def resp_get_header(self, name: object) -> bytes | None:
        value = self._response().headers.get(_text(name, "a header name").decode("latin-1"))
        return None if value is None else value.encode("latin-1")

    def resp_set_status(self, status: object) -> None:
        self._response().status = _status(status)

    def ctx(self) -> Any:
        converted = self._to_lua(self._flow(_REQUEST, _RESPONSE).ctx, 0)
        self.charge(0)
        return converted

    # -- json, base64, strings -------------------------------------------------------------------------

    def _to_lua(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise LuaScriptError("value nested too deeply")
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict) or hasattr(value, "items"):
            self.units -= len(value)
            return self.lua.table_from({str(k).encode(): self._to_lua(v, depth + 1) for k, v in value.items()})
        if isinstance(value, list | tuple):
            self.units -= len(value)
            return self.mark_array(self.lua.table_from([self._to_lua(v, depth + 1) for v in value]))
        return value

    def json_decode(self, text: object) -> Any:
        raw = _text(text, "json.decode's argument")
        self.charge(len(raw) // 16)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LuaScriptError(f"json.decode: {exc}") from exc
        converted = self._to_lua(value, 0)
        self.charge(0)
        return converted

    def _from_lua(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is bytes:
            try:
                return value.decode()
            except UnicodeDecodeError as exc:
                raise LuaScriptError("json.encode: a string is not valid UTF-8") from exc
        if kind is int or kind is bool or value is None:
            return value
        if kind is float:
            if value != value or value in (_INF, -_INF):
                raise LuaScriptError("json.encode: NaN and infinity have no JSON form")
            return value
        lua_kind = lupa.lua_type(value)
        if lua_kind != "table":
            raise LuaScriptError(f"json.encode: cannot encode a {lua_kind or kind.__name__}")
        if depth > MAX_DEPTH:
            raise LuaScriptError("json.encode: nested too deeply (or a cycle)")
        items = list(value.items())
        self.units -= len(items) * 8
        mark = self.kind(value)
        if mark == 2 or (mark == 0 and items and not all(type(k) is int for k, _ in items)):
            return self._object(items, depth)
        if not items:
            return [] if mark == 1 else {}
        return self._array(items, depth)

    def _object(self, items: list[tuple[Any, Any]], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in items:
            if isinstance(key, bytes):
                name = key.decode("utf-8", "replace")
            elif isinstance(key, int | float) and not isinstance(key, bool):
                name = str(key)
            else:
                raise LuaScriptError(f"json.encode: a {type(key).__name__} cannot be an object key")
            out[name] = self._from_lua(item, depth + 1)
        return out

    def _array(self, items: list[tuple[Any, Any]], depth: int) -> list[Any]:
        if not all(type(k) is int for k, _ in items):
            raise LuaScriptError("json.encode: an array (json.array or decoded) has non-integer keys")
        keys = [k for k, _ in items]
        low, high = min(keys), max(keys)
        if low < 0:
            raise LuaScriptError("json.encode: negative array index")
        if high > 2 * len(items) + 16:
            raise LuaScriptError("json.encode: array too sparse (holes become null only up to 2x its size)")
        slots: list[Any] = [None] * (high + 1)
        for key, item in items:
            slots[key] = self._from_lua(item, depth + 1)
        return slots if low == 0 else slots[1:]

    def json_encode(self, value: object) -> bytes:
        try:
            plain = self._from_lua(value, 0)
            self.charge(0)
            return orjson.dumps(plain)
        except orjson.JSONEncodeError as exc:
            raise LuaScriptError(f"json.encode: {exc}") from exc

    def json_schema_valid(self, schema: object, document: object) -> bool:
        schema_text = self.json_encode(schema) if lupa.lua_type(schema) == "table" else _text(schema, "schema")
        text = _text(document, "the document")
        self.charge(len(text) // 8)
        validate = _schema_validator(schema_text.decode("utf-8", "replace"))
        try:
            validate(orjson.loads(text))
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaValueException):
            return False
        return True

    def base64_decode(self, text: object) -> bytes:
        try:
            return base64.b64decode(_text(text, "base64.decode's argument"), validate=True)
        except binascii.Error as exc:
            raise LuaScriptError(f"base64.decode: {exc}") from exc

    def _unicode(self, value: object, change: Callable[[str], str]) -> bytes:
        text = _text(value, "s").decode("utf-8", "surrogateescape")
        return change(text).encode("utf-8", "surrogateescape")

    def strings_trim(self, value: object, cutset: object = None) -> bytes:
        text = _text(value, "s").decode("utf-8", "surrogateescape")
        cut = None if cutset is None else _text(cutset, "cutset").decode("utf-8", "surrogateescape")
        return text.strip(cut).encode("utf-8", "surrogateescape")

    def strings_split(self, value: object, sep: object) -> Any:
        text, by = _text(value, "s"), _text(sep, "sep")
        self.charge(len(text) // 16)
        if by:
            parts = text.split(by)
        else:
            parts = [c.encode("utf-8", "surrogateescape") for c in text.decode("utf-8", "surrogateescape")]
        return self.mark_array(self.lua.table_from(parts))

    def http_base(self, url: object) -> bytes:
        self._flow(_REQUEST, _RESPONSE)
        try:
            return self.http.base(_text(url, "the base URL").decode("latin-1")).encode()
        except HttpPolicyError as exc:
            raise LuaScriptError(str(exc)) from exc


class _Pool:
    """Runtimes for one script: reused, created on demand up to `size`, then callers wait."""

    def __init__(self, make: Callable[[], _Runtime], size: int, first: _Runtime) -> None:
        self._make = make
        self._size = size
        self._idle: list[_Runtime] = [first]
        self._created = 1
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> _Runtime:
        while not self._idle and self._created >= self._size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if self._idle:
            return self._idle.pop()
        self._created += 1
        try:
            return self._make()
        except Exception:
            self._created -= 1
            raise

    def release(self, runtime: _Runtime, discard: bool) -> None:
        runtime.flow = None
        if discard:
            self._created -= 1
        else:
            self._idle.append(runtime)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    @property
    def stats(self) -> tuple[int, int]:
        """(idle, created): for tests and metrics."""
        return len(self._idle), self._created


HttpSession = Callable[[], aiohttp.ClientSession]


class _LuaBase:
    """What every Lua plugin has: the pool, the driver, and response-header edits made in onRequest."""

    def __init__(self, name: str, spec: LuaPluginSpec, session: HttpSession, first: _Runtime) -> None:
        self.name = name
        self.spec = spec
        self._http = LuaHttp(spec.http)
        self._session = session
        self.pool = _Pool(lambda: _Runtime(name, spec, self._http), spec.max_runtimes, first)

    async def _invoke(self, flow: HttpFlow, phase: str) -> _Runtime | None:
        runtime = await self.pool.acquire()
        discard = True
        try:
            fn = runtime.on_request if phase == _REQUEST else runtime.on_response
            runtime.begin(flow, phase)
            args: tuple[Any, ...] = (runtime.start(fn, True),)
            calls = 0
            while True:
                out = runtime.step(args)
                if out[0] != b"http":
                    break
                calls += 1
                args = await self._call(runtime, out[1:], calls)
            discard = runtime.too_big()
            return runtime
        finally:
            runtime.stop()
            self.pool.release(runtime, discard)

    async def _call(self, runtime: _Runtime, request: tuple[Any, ...], calls: int) -> tuple[Any, ...]:
        base, method, path, headers, body = request
        if calls > self.spec.http.max_calls:
            return None, f"more than {self.spec.http.max_calls} http calls in one call (lua.http.maxCalls)".encode()
        try:
            result = await self._http.call(
                self._session(),
                base.decode("latin-1"),
                method.decode(),
                path.decode("latin-1"),
                self._http.request_headers(list(headers.items())),
                body,
            )
        except HttpPolicyError as exc:
            raise LuaScriptError(str(exc)) from exc
        if isinstance(result, str):
            return None, result.encode()
        status, data, response_headers = result
        table = runtime.lua.table_from({k.encode(): v.encode("latin-1") for k, v in response_headers.items()})
        return status, data, table

    def response_headers(self, flow: HttpFlow) -> None:
        edits: list[tuple[str, str | None]] = flow.metadata.get(self.name, ())
        if flow.response is None or not edits:
            return
        for name, value in edits:
            if value is None:
                flow.response.headers.popall(name, None)
            else:
                flow.response.headers[name] = value


class _OnRequest(_LuaBase):
    async def request(self, flow: HttpFlow) -> None:
        runtime = await self._invoke(flow, _REQUEST)
        assert runtime is not None
        if runtime.header_edits:
            flow.metadata[self.name] = runtime.header_edits
        if runtime.answered:
            status = runtime.answer_status or 200
            flow.response = Response(status, CIMultiDict(), runtime.answer_body or b"")


class _OnResponse(_LuaBase):
    async def response(self, flow: HttpFlow) -> None:
        await self._invoke(flow, _RESPONSE)


class LuaRequestPlugin(_OnRequest):
    """A script with onRequest only."""


class LuaResponsePlugin(_OnResponse):
    """A script with onResponse only (the proxy buffers responses where it applies)."""


class LuaPlugin(_OnRequest, _OnResponse):
    """A script with both onRequest and onResponse."""


def make_lua_plugin(name: str, spec: LuaPluginSpec, session: HttpSession) -> _LuaBase:
    """Compile and load the script once (LuaScriptError with a line number if it is broken)."""
    first = _Runtime(name, spec, LuaHttp(spec.http))
    has_request, has_response = first.on_request is not None, first.on_response is not None
    cls = LuaPlugin if has_request and has_response else LuaRequestPlugin if has_request else LuaResponsePlugin
    return cls(name, spec, session, first)


def check_script(name: str, spec: LuaPluginSpec) -> str | None:
    """None when the script compiles and loads within its bounds, else why not (with the line)."""
    try:
        _Runtime(name, spec, LuaHttp(spec.http))
    except LuaScriptError as exc:
        return str(exc)
    except lupa.LuaError as exc:
        return _where(str(exc))
    return None
