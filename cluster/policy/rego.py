"""OPA conditions: compile a Rego module once per source and ask its `allow` rule on each request.

The only module that imports regopy (rego-cpp behind ctypes; pinned, because the query
path calls the C API that regopy loads, see "Why the raw C API" below). It must also be
what loads regopy first in the process: see the SECURITY note at the import.

    check(source)                             admission: raises RegoCompileError with the position
    compile_rego(source) -> RegoProgram       pipeline build: ~5-7 ms with the probe, cached by sha256(source)
    RegoInput({"ctx": {...}})                 per request; converted on first use, once
    RegoProgram.allow(input) -> bool          per condition: ~0.15-0.3 ms, plus 25-100 µs of thread hand-off

What a user writes (``condition: {opa: {inline: ...}}``): one Rego module that starts
with ``package <dotted.name>`` and defines a boolean rule ``allow``. Wardgate asks
``data.<package>.allow`` with ``input = {"ctx": <the policy context>}``::

    package wardgate.myapi

    allow if {
        every g in ["dev", "ops"] { g in input.ctx.user.spec.groups }
        input.ctx.request.http.bodyMap.temperature < 0.7
    }

- ``default allow := false`` is implied: a second module, ``package __wardgate__``,
  holds ``default allow := false`` and ``allow := data.<package>.allow``, and that is
  the rule queried. The query therefore never comes back "undefined" (reading such a
  result through regopy's Node API aborts the process). Writing your own default is
  fine. ``__wardgate__`` is reserved as a package name.
- ``allow`` must be a boolean. Any other value (a string, a set from ``allow contains``,
  a function ``allow(x)``) is an error: at apply time when it already shows on an
  empty ctx, else at request time (the condition fails, and the rule denies).
- A missing input field is *undefined* in Rego, so the body that reads it fails and
  ``allow`` is false. That differs from CEL, where a missing key is an error. A DENY
  rule written in Rego must therefore not rely on a field being present.
- Built-in errors are errors (rego-cpp's strict mode): ``to_number("x")`` or a
  division by zero fails the condition instead of quietly making the body false, so
  a broken DENY condition cannot turn into an allow further down the list.
- Both Rego v1 syntax (``allow if { ... }``, ``import rego.v1`` optional) and v0
  bodies (``allow { ... }``) parse.
- Rejected at apply time: modules over 10,000 characters; no ``package`` line; no
  ``allow`` rule; the built-ins ``opa.runtime`` (it returns the gateway's environment
  variables), ``numbers.range`` / ``numbers.range_step`` (arrays of any size from two
  numbers), ``walk`` (a full traversal per call, quadratic when nested) and
  ``graph.reachable_paths`` (exponential output). The names are matched in the source
  text, comments and strings included. Errors rego-cpp only finds when it runs the
  rule (unknown functions, recursion, ``allow(x)``) are caught by a probe run on an
  empty ctx at apply time; those behind a condition the probe does not reach show
  at request time as condition errors.

The input document: str, int, float, bool, None, lists, tuples and maps with str
keys, as JSON parsing makes them. ``bytes`` (``ctx.request.http.body``) become a str,
UTF-8 decoded with U+FFFD for invalid bytes. Integers beyond int64 become floats.
Strings go in JSON-escaped, exactly as rego-cpp's own JSON input path stores them:
rego-cpp keeps every string, literals included, in its escaped source form. So
equality works as expected (``input.ctx.q == "say \\"hi\\""``), but ``count``,
``indexof`` and ``substring`` see escape sequences, and a literal spelled with a
``\\u`` escape differs from the same character typed plainly: write ``"é"``, not
``"\\u00e9"``. These fail the evaluation (RegoEvalError) rather than reach rego-cpp:
NaN or infinity, lone surrogates, other types, and nesting deeper than 512 levels
(rego-cpp recurses in C++; 5,000 levels crash it).

Time bound: rego-cpp 1.5.2 has no step limit, timeout or cancellation, and a ctypes
call cannot be interrupted. Rego has no recursion and no unbounded loops, but nested
iteration is polynomial in the request: a triple comprehension over 100 messages
took 2.4 s here, over 30 messages 65 ms. What is bounded: each query runs on one of
four daemon worker threads (ctypes releases the GIL) and the caller waits at most
``time_limit`` (default 50 ms), then fails with RegoTimeoutError. The overrunning
query still runs to its end on its worker and keeps that program busy; meanwhile
the program's other evaluations wait at most their own limit and fail too. So a
slow policy costs denials and at most four cores' worth of background work, never a
stalled event loop. The probe at apply time has a 1 s limit, which rejects modules
that are slow even on an empty ctx (comprehensions over large literals).
``time_limit=None`` runs the query on the caller's thread, without the ~25 µs
hand-off and without a bound.

Why the raw C API: regopy's ``Input`` (Python → rego-cpp) is ~60 % slower than the
builder below, passes bytes as arrays of ints, and its ``Output`` JSON-decodes every
result, which raises on the error texts rego-cpp returns as "ok" outputs. The
functions used (``regoInput*``, ``regoSetInput``, ``regoBundleQueryEntrypoint``,
``regoOutput*``, ``regoNode*``) are rego-cpp's documented C API, with the ctypes
signatures regopy declares.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Final

# SECURITY (memory safety): librego_shared.so links snmalloc and exports its own operator
# new/delete. Loaded first, it becomes the allocator that the shared libstdc++.so.6 binds
# to for the whole process, while other C++ extensions (cel-expr-python) free that memory
# with glibc: "free(): invalid pointer" at the next CEL error. Loading libstdc++ first
# binds it to its own allocator; rego-cpp keeps snmalloc for itself.
ctypes.CDLL("libstdc++.so.6")

import regopy  # type: ignore[import-untyped]  # noqa: E402
from regopy import rego_shared as _shared  # noqa: E402

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "MAX_SOURCE_LENGTH",
    "RegoCompileError",
    "RegoError",
    "RegoEvalError",
    "RegoInput",
    "RegoProgram",
    "RegoTimeoutError",
    "check",
    "compile_rego",
]

MAX_SOURCE_LENGTH: Final = 10_000
DEFAULT_TIME_LIMIT: Final = 0.05
PROBE_TIME_LIMIT: Final = 1.0
MAX_INPUT_DEPTH: Final = 512
DEFAULT_CACHE_SIZE: Final = 1024
WORKER_THREADS: Final = 4

_DECISION_PACKAGE: Final = "__wardgate__"
_ENTRYPOINT: Final = f"{_DECISION_PACKAGE}/allow"
_POLICY_FILE: Final = "policy.rego"
_TRUE: Final = '{"expressions":[true]}'
_FALSE: Final = '{"expressions":[false]}'
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# Error codes rego-cpp reports when running a rule that is wrong whatever the input;
# found by the apply-time probe, they are compile errors.
_STATIC_CODES: Final = frozenset(
    {"rego_recursion_error", "wellformed_error", "rego_type_error", "rego_compile_error", "rego_parse_error"}
)
NOT_BOOLEAN: Final = "not_boolean"
TIME_LIMIT: Final = "time_limit"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PACKAGE = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*[ \t]*package[ \t]+(?P<path>[^\s#]+)")
_PACKAGE_PATH = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_ALLOW_RULE = re.compile(r"(?m)^[ \t]*(?:default[ \t]+)?allow\b")
_FORBIDDEN = re.compile(
    r"(?<![\w.])(?P<name>opa\s*\.\s*runtime|numbers\s*\.\s*range(?:_step)?|walk|graph\s*\.\s*reachable_paths)\s*\("
)
_FORBIDDEN_WHY: Final = {
    "opa.runtime": "it returns the gateway's environment variables",
    "numbers.range": "it builds an array of any size from two numbers",
    "numbers.range_step": "it builds an array of any size from three numbers",
    "walk": "it traverses its whole argument on every call, and nested walks are quadratic",
    "graph.reachable_paths": "its result can grow exponentially with the graph",
}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_ENGINE_ERROR = re.compile(rb"\(error \d+:(?P<file>[^|\n]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg (?P<size>\d+):")

_lib: Any = _shared.rego
_Status = Callable[..., int]  # the C functions return a status code (0 is OK) or a pointer
_new_input: Callable[[], int | None] = _lib.regoNewInput
_free_input: Callable[[int], None] = _lib.regoFreeInput
_input_str: _Status = _lib.regoInputString
_input_int: _Status = _lib.regoInputInt
_input_float: _Status = _lib.regoInputFloat
_input_bool: _Status = _lib.regoInputBoolean
_input_null: _Status = _lib.regoInputNull
_input_item: _Status = _lib.regoInputObjectItem
_input_object: _Status = _lib.regoInputObject
_input_array: _Status = _lib.regoInputArray
_set_input: _Status = _lib.regoSetInput
_query_entrypoint: Callable[[int, int, bytes], int | None] = _lib.regoBundleQueryEntrypoint
_output_ok: Callable[[int], bool] = _lib.regoOutputOk
_output_node: Callable[[int], int | None] = _lib.regoOutputNode
_free_output: Callable[[int], None] = _lib.regoFreeOutput
_bundle_node: Callable[[int], int | None] = _lib.regoBundleNode
_node_type: Callable[[int], int] = _lib.regoNodeType
_node_size: Callable[[int], int] = _lib.regoNodeSize
_node_get: Callable[[int, int], int | None] = _lib.regoNodeGet
_ERROR_SEQ: Final = int(regopy.NodeKind.ErrorSeq)
_ERROR: Final = int(regopy.NodeKind.Error)
_ERROR_MESSAGE: Final = int(regopy.NodeKind.ErrorMessage)
_ERROR_CODE: Final = int(regopy.NodeKind.ErrorCode)


class RegoError(Exception):
    """Base of the Rego errors.

    RegoError
    ├── RegoCompileError    the module is not a usable condition (apply time)
    └── RegoEvalError       the module failed on this request's input
        └── RegoTimeoutError    ...or did not finish within its time limit
    """


class RegoCompileError(RegoError):
    """The module does not parse, breaks a rule above, or fails the empty-ctx probe.

    ``line`` and ``column`` are 1-based and point into the user's module when rego-cpp
    reports a position, else None. ``message`` is the engine's (or Wardgate's) text.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None, source: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line is not None and column is not None else ""
        text = f"invalid Rego module{where}: {message}"
        if line is not None and column is not None and source:
            lines = source.splitlines()
            if 0 < line <= len(lines):
                text += f"\n  {lines[line - 1]}\n  {' ' * (column - 1)}^"
        super().__init__(text)


class RegoEvalError(RegoError):
    """The query failed: a built-in error, conflicting outputs, a non-boolean allow, a bad input.

    ``code`` is rego-cpp's error code (``eval_builtin_error``, ``eval_conflict_error``,
    ...) or one of Wardgate's (``not_boolean``, ``time_limit``, ``bad_input``, ``engine``).
    """

    def __init__(self, message: str, code: str = "engine") -> None:
        self.code = code
        super().__init__(message)


class RegoTimeoutError(RegoEvalError):
    """The query did not finish within its time limit (it may still be running on a worker)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, TIME_LIMIT)


class _BadInput(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.path: list[str] = []


def _push_str(handle: int, value: str) -> int:
    # rego-cpp keeps strings in their JSON-escaped source form and compares them so; its
    # own JSON input path does the same. Passing raw text would make 'say "hi"' differ
    # from the literal "say \\"hi\\"" (and a C string would end at a NUL).
    if _NEEDS_ESCAPE.search(value):
        value = json.dumps(value, ensure_ascii=False)[1:-1]
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:
        raise _BadInput(f"a string is not valid Unicode ({exc.reason})") from exc
    return _input_str(handle, data)


def _push(handle: int, value: object, depth: int) -> int:
    """Push ``value`` on rego-cpp's input stack; returns the OR of the C status codes."""
    if value is None:
        return _input_null(handle)
    if value is True or value is False:
        return _input_bool(handle, value)
    if isinstance(value, str):
        return _push_str(handle, value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return _input_int(handle, value)
        try:
            value = float(value)
        except OverflowError as exc:
            raise _BadInput("an integer is too large for a float") from exc
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadInput(f"{value} is not a JSON number")
        return _input_float(handle, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _push_str(handle, bytes(value).decode("utf-8", "replace"))
    if depth >= MAX_INPUT_DEPTH:
        raise _BadInput(f"nesting is deeper than {MAX_INPUT_DEPTH} levels")
    status = 0
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _BadInput(f"map key {key!r} is not a string")
            try:
                status |= _push_str(handle, key) | _push(handle, item, depth + 1) | _input_item(handle)
            except _BadInput as exc:
                exc.path.append(f"[{key!r}]")
                raise
        return status | _input_object(handle, len(value))
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            try:
                status |= _push(handle, item, depth + 1)
            except _BadInput as exc:
                exc.path.append(f"[{index}]")
                raise
        return status | _input_array(handle, len(value))
    raise _BadInput(f"a {type(value).__name__} has no Rego form")


def _build_input(value: Mapping[str, object]) -> int:
    handle = _new_input()
    if not handle:
        raise RegoEvalError("rego-cpp could not allocate an input")
    try:
        if _push(handle, value, 0) != 0:
            raise RegoEvalError("rego-cpp rejected the input", "bad_input")
    except _BadInput as exc:
        _free_input(handle)
        path = "".join(reversed(exc.path))
        raise RegoEvalError(f"input{path}: {exc}", "bad_input") from None
    except BaseException:
        _free_input(handle)
        raise
    return handle


class RegoInput:
    """One request's input document, converted for rego-cpp once and shared by every program.

    ``value`` is the whole document, ``{"ctx": {...}}``. Construction is free; the
    first evaluation converts it (~3-6 µs per JSON value) and later ones reuse it. A
    value Rego cannot hold makes every evaluation raise RegoEvalError. An input left
    behind by a query that overran its time limit stays bound to that query and
    refuses further use. One request, one task: the lazy conversion is not locked.
    """

    __slots__ = ("_abandoned", "_error", "_handle", "_value")

    def __init__(self, value: Mapping[str, object]) -> None:
        self._value = value
        self._handle = 0
        self._error: RegoEvalError | None = None
        self._abandoned = False

    def __del__(self) -> None:
        if self._handle:
            _free_input(self._handle)

    def _pointer(self) -> int:
        if self._abandoned:
            raise RegoEvalError("this input belongs to a query that overran its time limit", TIME_LIMIT)
        if not self._handle:
            if self._error is None:
                try:
                    self._handle = _build_input(self._value)
                except RegoEvalError as exc:
                    self._error = exc
            if self._error is not None:
                raise RegoEvalError(str(self._error), self._error.code)
        return self._handle


def _node_errors(node: int | None) -> list[tuple[str, str]]:
    """(message, code) of each error in an ErrorSeq/Error node; ErrorAst subtrees are skipped."""
    found: list[tuple[str, str]] = []
    if not node:
        return found
    kind = _node_type(node)
    errors: list[int | None] = [node] if kind == _ERROR else []
    if kind == _ERROR_SEQ:
        errors = [_node_get(node, i) for i in range(_node_size(node))]
    for error in errors:
        if not error or _node_type(error) != _ERROR:
            continue
        message = code = ""
        for i in range(_node_size(error)):
            child = _node_get(error, i)
            child_kind = _node_type(child) if child else None
            if child_kind == _ERROR_MESSAGE:
                message = _shared.rego_node_value(child)
            elif child_kind == _ERROR_CODE:
                code = _shared.rego_node_value(child)
        found.append((message or "unknown error", code))
    return found


def _eval_error(errors: list[tuple[str, str]], fallback: str) -> RegoEvalError:
    if not errors:
        return RegoEvalError(fallback)
    text = "; ".join(f"{message} ({code})" if code else message for message, code in errors)
    return RegoEvalError(text, errors[0][1] or "engine")


def _describe(value: object) -> str:
    kind = {dict: "an object", list: "an array or set", str: "a string", type(None): "null"}.get(type(value))
    kind = kind or ("a number" if isinstance(value, int | float) else type(value).__name__)
    text = json.dumps(value)
    return f"{kind} ({text[:60]}{'...' if len(text) > 60 else ''})"


def _decode(output: int) -> bool:
    """The allow value of a query's output; never touches the Node API of a non-error result."""
    if not _output_ok(output):
        raise _eval_error(_node_errors(_output_node(output)), "evaluation failed")
    text: str = _shared.rego_output_string(output)
    if text == _TRUE:
        return True
    if text == _FALSE:
        return False
    if text == "undefined":  # cannot happen with the default rule; answered without the Node API anyway
        return False
    if text.startswith("("):
        raise _eval_error(_node_errors(_output_node(output)), text[:200])
    try:
        document = json.loads(text)
    except ValueError:
        raise RegoEvalError(f"unreadable result {text[:200]!r}") from None
    results = document if isinstance(document, list) else [document]
    values = [v for r in results if isinstance(r, dict) for v in r.get("expressions", [])]
    if len(values) == 1 and isinstance(values[0], bool):
        return values[0]
    shown = _describe(values[0]) if len(values) == 1 else f"{len(values)} values"
    raise RegoEvalError(f"allow must be a boolean; it is {shown}", NOT_BOOLEAN)


class _Workers:
    """Daemon threads that run queries, so that a caller can stop waiting for one that overruns.

    Daemon, so an overrunning query never holds up interpreter exit.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[Future[bool], Callable[[], bool]]] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], bool]) -> Future[bool]:
        if not self._started:
            self._start()
        future: Future[bool] = Future()
        self._jobs.put((future, job))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for n in range(self._size):
                threading.Thread(target=self._run, name=f"wardgate-rego-{n}", daemon=True).start()
            self._started = True

    def _run(self) -> None:
        while True:
            future, job = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except Exception as exc:  # handed to the waiting caller
                future.set_exception(exc)
            del future, job  # the job holds the request's input; free it now, not at the next job


_WORKERS = _Workers(WORKER_THREADS)


class RegoProgram:
    """A compiled module: its own rego-cpp interpreter and bundle. Share it freely.

    Queries on one program run one at a time (a lock), on a worker thread when a
    time limit is given.
    """

    __slots__ = ("_bundle", "_interpreter", "_lock", "package", "sha256", "source")

    def __init__(self, source: str, package: str, interpreter: Any, bundle: Any) -> None:
        self.source = source
        self.package = package
        self.sha256 = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        self._interpreter = interpreter
        self._bundle = bundle
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegoProgram(package={self.package!r}, sha256={self.sha256[:12]!r})"

    def allow(self, input: RegoInput | Mapping[str, object], *, time_limit: float | None = DEFAULT_TIME_LIMIT) -> bool:
        """The value of ``allow`` for ``input`` (``{"ctx": {...}}``). Raises RegoEvalError.

        With ``time_limit`` (seconds) the query runs on a worker and RegoTimeoutError
        comes after at most that long, including any wait for an earlier query of this
        program; with None it runs here, unbounded.
        """
        document = input if isinstance(input, RegoInput) else RegoInput(input)
        pointer = document._pointer()
        if time_limit is None:
            with self._lock:
                return self._query(pointer)
        deadline = time.monotonic() + time_limit
        limit = f"{time_limit * 1000:g} ms"
        if not self._lock.acquire(timeout=time_limit):
            raise RegoTimeoutError(f"not evaluated: an earlier query of this policy is still running after {limit}")
        try:
            future = _WORKERS.submit(functools.partial(self._query_and_release, document, pointer))
        except BaseException:
            self._lock.release()
            raise
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
        if future.cancel():
            self._lock.release()
        elif future.done():
            return future.result()
        else:
            document._abandoned = True
        raise RegoTimeoutError(f"evaluation did not finish within {limit}")

    def _query_and_release(self, document: RegoInput, pointer: int) -> bool:
        # ``document`` rides along so that its C input outlives the query, even when
        # the caller has given up and dropped it.
        try:
            return self._query(pointer)
        finally:
            self._lock.release()

    def _query(self, pointer: int) -> bool:
        interpreter = self._interpreter._impl
        if _set_input(interpreter, pointer) != 0:
            raise RegoEvalError(f"rego-cpp rejected the input: {_shared.rego_get_error(interpreter)}", "bad_input")
        output = _query_entrypoint(interpreter, self._bundle._impl, _ENTRYPOINT.encode())
        if not output:
            raise RegoEvalError(_shared.rego_get_error(interpreter) or "query failed")
        try:
            return _decode(output)
        except regopy.RegoError as exc:
            raise RegoEvalError(f"reading the result failed: {exc}") from exc
        finally:
            _free_output(output)


def _position(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a UTF-8 byte offset."""
    before = source.encode()[:offset].decode("utf-8", "ignore")
    line = before.count("\n") + 1
    return line, len(before) - (before.rfind("\n") + 1) + 1


def _parse_error(source: str, text: str) -> RegoCompileError:
    """A compile error from rego-cpp's error-sequence text (length-prefixed fields, byte offsets)."""
    data = text.encode()
    messages: list[str] = []
    where: tuple[int, int] | None = None
    for match in _ENGINE_ERROR.finditer(data):
        start = match.end()
        message = data[start : start + int(match["size"])].decode("utf-8", "replace")
        if message not in messages:
            messages.append(message)
        if where is None and match["file"].decode() == _POLICY_FILE:
            where = _position(source, int(match["offset"]))
    if not messages:
        return RegoCompileError(text.strip()[:500] or "rego-cpp rejected the module")
    line, column = where if where else (None, None)
    return RegoCompileError("; ".join(messages), line, column, source)


def _check_text(source: str) -> str:
    """The package path, after the checks made on the text alone."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise RegoCompileError(f"the module is {len(source)} characters long; the limit is {MAX_SOURCE_LENGTH}")
    match = _PACKAGE.match(source)
    if match is None:
        raise RegoCompileError("the module must start with `package <name>` (comments may come first)")
    package = match["path"]
    if not _PACKAGE_PATH.fullmatch(package):
        raise RegoCompileError(f"package {package!r}: use dotted identifiers, like `package wardgate.myapi`")
    if package.split(".")[0] == _DECISION_PACKAGE:
        raise RegoCompileError(f"the package name {_DECISION_PACKAGE} is reserved for Wardgate")
    forbidden = _FORBIDDEN.search(source)
    if forbidden:
        name = re.sub(r"\s+", "", forbidden["name"])
        line, column = _position(source, len(source[: forbidden.start()].encode()))
        raise RegoCompileError(f"{name}() is not allowed: {_FORBIDDEN_WHY[name]}", line, column, source)
    return package


def _compile(source: str) -> RegoProgram:
    package = _check_text(source)
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE  # else rego-cpp prints errors on stdout
    interpreter.strict_built_in_errors = True
    try:
        interpreter.add_module(_POLICY_FILE, source)
    except regopy.RegoError as exc:
        raise _parse_error(source, str(exc)) from None
    if not _ALLOW_RULE.search(source):
        raise RegoCompileError(f"the module defines no `allow` rule; Wardgate asks data.{package}.allow")
    decision = f"package {_DECISION_PACKAGE}\n\ndefault allow := false\n\nallow := data.{package}.allow\n"
    try:
        interpreter.add_module("wardgate.rego", decision)
        bundle = interpreter.build(None, [_ENTRYPOINT])
    except regopy.RegoError as exc:
        raise _parse_error(source, str(exc)) from None
    # A bundle that failed to build still comes back, and querying it crashes the process.
    if not bundle.ok():
        errors = _node_errors(_bundle_node(bundle._impl))
        raise RegoCompileError("; ".join(message for message, _ in errors) or "the module does not build")
    program = RegoProgram(source, package, interpreter, bundle)
    try:
        program.allow(RegoInput({"ctx": {}}), time_limit=PROBE_TIME_LIMIT)
    except RegoTimeoutError:
        raise RegoCompileError(
            f"evaluating the module on an empty ctx took longer than {PROBE_TIME_LIMIT:g} s"
        ) from None
    except RegoEvalError as exc:
        if exc.code in _STATIC_CODES or exc.code == NOT_BOOLEAN:
            raise RegoCompileError(str(exc)) from None
    return program


class _ProgramCache:
    """The last ``max_entries`` programs by sha256(source); compiling happens outside the lock."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        self._max_entries = max_entries
        self._programs: OrderedDict[bytes, RegoProgram] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._programs)

    def get_or_compile(self, source: str) -> RegoProgram:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
        program = _compile(source)
        with self._lock:
            program = self._programs.setdefault(key, program)
            self._programs.move_to_end(key)
            while len(self._programs) > self._max_entries:
                self._programs.popitem(last=False)
        return program


_CACHE = _ProgramCache()


def compile_rego(source: str) -> RegoProgram:
    """The program for ``source``, compiled once (cached by sha256). Raises RegoCompileError."""
    return _CACHE.get_or_compile(source)


def check(source: str) -> None:
    """Validate a module at apply time. Raises RegoCompileError with the position when known."""
    compile_rego(source)
