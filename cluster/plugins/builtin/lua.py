"""Lua plugins: `onRequest(ctx)` / `onResponse(ctx)` in a sandboxed, pooled Lua 5.4 (lupa) runtime.

    build:    LuaPlugin(spec) ─▶ one runtime made now (script compiled and run; errors surface here)
    request:  pool.acquire() ─▶ coroutine(onRequest) with a count hook ─▶ step ─┬▶ done / exit
                                                     ▲                         └▶ http call: await, resume
                                                     └───────────────────────────┘
              ─▶ answer (exit / setResponseBody / setStatusCode) into flow.response ─▶ pool.release()

Bounds per call: `maxInstructions` (the count hook; API calls are charged by size), `timeLimit` of
script time (HTTP waits excluded), `maxMemory` for the runtime; lua_limits says how they reach inside
library calls. A runtime that failed in any way is discarded, never reused. This is the only module
that imports lupa; the sandbox itself is built in Lua (lua_prelude, lua_json, lua_limits).

Only strings, numbers and booleans cross into Lua, and every string is checked against the memory
the runtime has left before it crosses (`_fit`). lupa converts values outside Lua's error handling:
an allocation over `max_memory` there unwinds through the Python callback with the GIL held and the
process deadlocks (or, with no Lua call on the stack, Lua panics and aborts the process).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import lupa.lua54 as lupa
from multidict import CIMultiDict

from wardgate.cluster.plugins.builtin.lua_api import LOAD, REQUEST, RESPONSE, FlowApi, LuaScriptError
from wardgate.cluster.plugins.builtin.lua_http import HttpPolicyError, LuaHttp
from wardgate.cluster.plugins.builtin.lua_json import JSON_LUA
from wardgate.cluster.plugins.builtin.lua_limits import GC_CLOCK, LIMITS_LUA, STEP_LIMIT
from wardgate.cluster.plugins.builtin.lua_prelude import PRELUDE
from wardgate.cluster.plugins.flow import HttpFlow, Response
from wardgate.cluster.resources.service import LuaPluginSpec

log = logging.getLogger(__name__)

__all__ = ["LuaPlugin", "LuaRequestPlugin", "LuaResponsePlugin", "LuaScriptError", "check_script", "make_lua_plugin"]

HOOK_EVERY = 1000
MIN_EVERY = 10
BASE_KB = 512
QUANTUM = 1_000_000
_SLACK = 4096
_NAME_LINE = re.compile(r"^[^:\n]*:(\d+): (.*)$", re.S)


class _BoundExceeded(Exception):
    pass


def _deny_attributes(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError("Python attributes are not accessible from Lua")


def _where(message: str) -> str:
    """`safety:12: msg` -> `line 12: msg` (the chunk name is the plugin's, already in the log line)."""
    match = _NAME_LINE.match(message)
    return f"line {match.group(1)}: {match.group(2)}" if match else message


class _Runtime(FlowApi):
    """One sandboxed Lua state with the script loaded. One call at a time; it holds that call's state."""

    def __init__(self, name: str, spec: LuaPluginSpec, http: LuaHttp) -> None:
        super().__init__()
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
        self.units = 0
        self.deadline = 0.0
        self.left = 0.0
        self.bound: str | None = None
        prelude = self.lua.execute(PRELUDE, self._api())
        # Look the driver functions up once, by bytes key (the runtime has no string encoding).
        self.compile, self.freeze, self.entry = (prelude[k] for k in (b"compile", b"freeze", b"entry"))
        self._run, self.resume, self._stop = (prelude[k] for k in (b"run", b"step", b"stop"))
        self._first: tuple[Any, bool] | None = None
        self._open = False  # Lua holds a call's coroutine (it lets go itself when the call ends)
        self.collect = prelude[b"collect"]
        compiled = self.compile(spec.inline.encode(), name.encode())
        if isinstance(compiled, tuple):
            raise LuaScriptError(_where(compiled[1].decode(errors="replace")))
        self._load(compiled)
        self.freeze()
        self.on_request = self.entry(b"onRequest")
        self.on_response = self.entry(b"onResponse")
        if self.on_request is None and self.on_response is None:
            raise LuaScriptError("the script defines neither onRequest nor onResponse")

    def _api(self) -> Any:
        g = self._guard
        req = {
            b"getRequestBody": g(self.get_body),
            b"setRequestBody": g(self.set_body),
            b"getRequestHeader": g(self.get_header),
            b"setRequestHeader": g(self.set_header),
            b"deleteRequestHeader": g(self.delete_header),
            b"getPath": g(self.get_path),
            b"setPath": g(self.set_path),
            b"getMethod": g(self.get_method),
            b"getQueryParam": g(self.get_query),
            b"setQueryParam": g(self.set_query),
            b"deleteQueryParam": g(self.delete_query),
            b"setResponseBody": g(self.answer_with_body),
            b"setResponseHeader": g(self.edit_response_header),
            b"deleteResponseHeader": g(self.delete_response_header),
            b"setStatusCode": g(self.answer_with_status),
        }
        resp = {
            b"getResponseBody": g(self.resp_get_body),
            b"setResponseBody": g(self.resp_set_body),
            b"getResponseCode": g(self.resp_get_code),
            b"getResponseHeader": g(self.resp_get_header),
            b"setResponseHeader": g(self.edit_response_header),
            b"deleteResponseHeader": g(self.delete_response_header),
            b"setStatusCode": g(self.resp_set_status),
        }
        api = {
            b"hook_every": HOOK_EVERY,
            b"min_every": MIN_EVERY,
            b"base_kb": BASE_KB,
            b"quantum": QUANTUM,
            b"step_limit": STEP_LIMIT,
            b"json_src": JSON_LUA,
            b"limits_src": LIMITS_LUA,
            b"tick": self.tick,
            b"exhausted": lambda: self.bound is not None,
            b"exit": g(self.answer_with_status),
            b"ctx_node": g(self._ctx_node),
            b"ctx_raw": g(self.ctx_raw),
            b"req": self.lua.table_from(req),
            b"resp": self.lua.table_from(resp),
            b"json_schema_valid": g(self.json_schema_valid, 8),
            b"base64_encode": g(self.base64_encode, 1),
            b"base64_decode": g(self.base64_decode, 1),
            b"strings_len": g(self.strings_len, 1),
            b"strings_lower": g(lambda s: self.unicode(s, str.lower), 1),
            b"strings_upper": g(lambda s: self.unicode(s, str.upper), 1),
            b"strings_trim": g(self.strings_trim, 1),
            b"find_plain": g(self.find_plain, 16),
            b"lower_ascii": g(lambda s: s.lower() if isinstance(s, bytes) else s),
            b"http_base": g(self.http_base),
        }
        return self.lua.table_from(api)

    # -- bounds ---------------------------------------------------------------------------------------

    def begin(self, flow: HttpFlow | None, phase: str) -> None:
        self.reset(flow, phase)
        self.units = self.spec.max_instructions
        self.left = self.spec.time_limit
        self.bound = None

    def resume_clock(self) -> None:
        self.deadline = time.perf_counter() + self.left

    def pause_clock(self) -> None:
        self.left = self.deadline - time.perf_counter()

    def tick(self, spent: int) -> bool:
        self.units -= spent
        if self.units < 0:
            self.bound = f"instruction limit ({self.spec.max_instructions}) exceeded"
        elif time.perf_counter() > self.deadline:
            self.bound = f"time limit ({self.spec.time_limit:g}s) exceeded"
        return self.bound is None

    def _exceed(self, bound: str) -> None:
        self.bound = self.bound or bound
        raise _BoundExceeded(self.bound)

    def _fit(self, size: int) -> None:
        """Refuse a value that would not fit in the runtime's memory (after a full collection)."""
        limit = self.spec.max_memory - _SLACK
        if self.lua.get_memory_used() + size > limit:
            self.collect()
            if self.lua.get_memory_used() + size > limit:
                self._exceed(f"memory limit ({self.spec.max_memory} bytes) exceeded")

    def _guard(self, fn: Callable[..., Any], per_byte: int = 0) -> Callable[..., Any]:
        """An API callback as Lua sees it: time-checked, charged by size, its result made to fit."""

        def guarded(*args: Any) -> Any:
            size = sum(len(a) for a in args if type(a) is bytes)
            if not self.tick(size // per_byte):
                raise _BoundExceeded(self.bound)
            result = fn(*args)
            if type(result) is bytes:
                self._fit(len(result))
                self.units -= len(result) // per_byte
            return result

        def unsized(*args: Any) -> Any:  # most of the API: one time check, nothing charged by size
            if not self.tick(0):
                raise _BoundExceeded(self.bound)
            result = fn(*args)
            if type(result) is bytes:
                self._fit(len(result))
            return result

        return guarded if per_byte else unsized

    def _ctx_node(self, handle: object) -> bytes:
        """A ctx level is charged by its number of items before it is converted (8 units each)."""
        if not self.tick(8 * len(self._node(handle))):
            raise _BoundExceeded(self.bound)
        return self.ctx_node(handle)

    # -- driving a call ---------------------------------------------------------------------------------

    def start(self, fn: Any, with_ctx: bool) -> None:
        """The call's coroutine is made by its first step (one crossing into Lua, not two)."""
        self._first, self._open = (fn, with_ctx), True

    def stop(self) -> None:
        self._first = None
        if self._open:
            self._open = False
            self._stop()

    def step(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        self._fit(sum(len(a) for a in args if type(a) is bytes) + 64 * len(args))
        self.resume_clock()
        try:
            if self._first is not None:
                (fn, with_ctx), self._first = self._first, None
                result = self._run(fn, with_ctx, self.phase == REQUEST)
            else:
                result = self.resume(*args)
        except lupa.LuaMemoryError as exc:
            raise LuaScriptError(f"memory limit ({self.spec.max_memory} bytes) exceeded") from exc
        except lupa.LuaError as exc:
            raise LuaScriptError(self.bound or str(exc)) from exc
        finally:
            self.pause_clock()
        out = result if isinstance(result, tuple) else (result,)
        self._open = out[0] == b"http"
        if not self._open and len(out) > 2 and out[2] is not None:
            self.set_body(out[2])  # the body the call set (lua_prelude keeps it until the call ends)
        if out[0] == b"error":
            if self.bound is not None:
                raise LuaScriptError(self.bound)
            message = out[1].decode(errors="replace")
            if message == "not enough memory":
                message = f"memory limit ({self.spec.max_memory} bytes) exceeded"
            raise LuaScriptError(_where(message))
        return out

    def _load(self, chunk: Any) -> None:
        self.begin(None, LOAD)
        self.start(chunk, False)
        kind = self.step(())[0]
        self.stop()
        if kind != b"done":
            raise LuaScriptError("the script's top level may not call exit or http (only onRequest/onResponse)")

    def too_big(self) -> bool:
        used: int = self.lua.get_memory_used()
        return used > self.spec.max_memory // 2

    def http_base(self, url: object) -> bytes:
        self._flow(REQUEST, RESPONSE)
        if not isinstance(url, bytes):
            raise LuaScriptError("the base URL must be a string")
        try:
            return self.http.base(url.decode("latin-1")).encode()
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

_EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="lua")
"""Where long Lua steps run. A runtime is used by one step at a time (the pool), so threads never share one."""

INLINE_BUDGET = 0.002
"""A step of a script that has never taken longer than this (seconds of CPU) runs on the event loop: handing a
200 µs step to a thread costs more than the step (the handoff and the GIL traffic of its API calls halved
the full pipeline's throughput). The first step over it moves the plugin to threads for good, so a script
can hold up the loop once, for at most its timeLimit, and only with a body under INLINE_MAX_BODY."""


INLINE_MAX_BODY = 64 * 1024
"""Bodies larger than this always go to a thread: a script's work usually grows with the body it reads."""


class _LuaBase:
    """What every Lua plugin has: the pool, the driver, and response-header edits made in onRequest."""

    def __init__(self, name: str, spec: LuaPluginSpec, session: HttpSession, first: _Runtime) -> None:
        self.name = name
        self.spec = spec
        self._http = LuaHttp(spec.http)
        self._session = session
        self.pool = _Pool(lambda: _Runtime(name, spec, self._http), spec.max_runtimes, first)
        self.inline = True
        """Steps run on the event loop until one of them takes longer than INLINE_BUDGET; then, for this
        plugin's life (until its Service changes), every step runs on a thread."""

    @staticmethod
    def _small(flow: HttpFlow, phase: str) -> bool:
        """Whether the body the script may read is small enough for an inline step."""
        if phase == REQUEST:
            return len(flow.request.body) <= INLINE_MAX_BODY
        body = flow.response.body if flow.response is not None else None
        return body is None or len(body) <= INLINE_MAX_BODY

    async def _invoke(self, flow: HttpFlow, phase: str) -> _Runtime | None:
        runtime = await self.pool.acquire()
        discard = True
        try:
            fn = runtime.on_request if phase == REQUEST else runtime.on_response
            runtime.begin(flow, phase)
            runtime.start(fn, True)
            args: tuple[Any, ...] = ()
            calls = 0
            loop = asyncio.get_running_loop()
            while True:
                if self.inline and self._small(flow, phase):
                    # CPU time of this thread: a step preempted by a busy machine is not a long step, nor is one
                    # that Python's garbage collector happened to interrupt (a full collection of the node's heap
                    # takes milliseconds; counted, it sent plugins to threads at random, a third of the
                    # full pipeline's throughput gone for good).
                    started, collected = time.thread_time(), GC_CLOCK.seconds()
                    try:
                        out = runtime.step(args)
                    finally:
                        spent = time.thread_time() - started - (GC_CLOCK.seconds() - collected)
                        if spent > INLINE_BUDGET:
                            self.inline = False
                            log.warning(
                                "lua plugin %s: a step took %.1f ms of CPU; its steps run on threads from now on",
                                self.name,
                                spent * 1000,
                            )
                else:
                    # Off the event loop: lupa releases the GIL while Lua runs, so a script running up to its
                    # time limit delays only its own request, never the node's other requests.
                    out = await loop.run_in_executor(_EXECUTOR, runtime.step, args)
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
        base, method, path, flat, body = request
        if calls > self.spec.http.max_calls:
            return None, f"more than {self.spec.http.max_calls} http calls in one call (lua.http.maxCalls)".encode()
        fields = flat.split(b"\0")[:-1]
        try:
            result = await self._http.call(
                self._session(),
                base.decode("latin-1"),
                method.decode(),
                path.decode("latin-1"),
                self._http.request_headers(list(zip(fields[::2], fields[1::2], strict=True))),
                body,
            )
        except HttpPolicyError as exc:
            raise LuaScriptError(str(exc)) from exc
        if isinstance(result, str):
            return None, result.encode()
        status, data, response_headers = result
        names = b"".join(k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0" for k, v in response_headers.items())
        return status, data, names

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
        runtime = await self._invoke(flow, REQUEST)
        assert runtime is not None
        if runtime.header_edits:
            flow.metadata[self.name] = runtime.header_edits
        if runtime.answered:
            status = runtime.answer_status or 200
            flow.response = Response(status, CIMultiDict(), runtime.answer_body or b"")


class _OnResponse(_LuaBase):
    async def response(self, flow: HttpFlow) -> None:
        await self._invoke(flow, RESPONSE)


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
