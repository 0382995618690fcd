"""OPA conditions: compile a Rego module once per source and ask its `allow` rule on each request.

Compiling and checking here; the query in rego_eval.py, the input document in
rego_input.py, the errors in rego_errors.py, and rego-cpp's C API in rego_capi.py, the
only module that imports regopy (rego-cpp behind ctypes; pinned, because the query path
calls the C API that regopy loads, see "Why the raw C API" below). Callers import
everything from here.

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

Size bound: a module is handed only the ctx fields it names by ``input.ctx.<field>...``
paths (any other use of ``input`` hands it everything), so a rule that never reads
``bodyMap`` never converts the body. What it does read may hold at most
MAX_INPUT_VALUES (20,000) JSON values; beyond that the condition fails with
``input_too_large`` (the rule denies) instead of stalling the event loop: building
rego-cpp's input costs ~3 µs per value, ~0.5 s for a 1 MiB body of small values.

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

import hashlib
import re
import threading
from collections import OrderedDict
from typing import Final

from wardgate.cluster.policy import rego_capi as capi
from wardgate.cluster.policy.rego_errors import (
    BAD_INPUT,
    INPUT_TOO_LARGE,
    NOT_BOOLEAN,
    STATIC_CODES,
    TIME_LIMIT,
    RegoCompileError,
    RegoError,
    RegoEvalError,
    RegoTimeoutError,
)
from wardgate.cluster.policy.rego_eval import DECISION_PACKAGE, DEFAULT_TIME_LIMIT, ENTRYPOINT, RegoProgram, node_errors
from wardgate.cluster.policy.rego_input import MAX_INPUT_DEPTH, MAX_INPUT_VALUES, RegoInput, input_paths

__all__ = [
    "BAD_INPUT",
    "DEFAULT_TIME_LIMIT",
    "INPUT_TOO_LARGE",
    "MAX_INPUT_DEPTH",
    "MAX_INPUT_VALUES",
    "MAX_SOURCE_LENGTH",
    "NOT_BOOLEAN",
    "TIME_LIMIT",
    "RegoCompileError",
    "RegoError",
    "RegoEvalError",
    "RegoInput",
    "RegoProgram",
    "RegoTimeoutError",
    "check",
    "compile_rego",
    "input_paths",
]

MAX_SOURCE_LENGTH: Final = 10_000
PROBE_TIME_LIMIT: Final = 1.0
DEFAULT_CACHE_SIZE: Final = 1024

_POLICY_FILE: Final = "policy.rego"
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
_ENGINE_ERROR = re.compile(rb"\(error \d+:(?P<file>[^|\n]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg (?P<size>\d+):")


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
    if package.split(".")[0] == DECISION_PACKAGE:
        raise RegoCompileError(f"the package name {DECISION_PACKAGE} is reserved for Wardgate")
    forbidden = _FORBIDDEN.search(source)
    if forbidden:
        name = re.sub(r"\s+", "", forbidden["name"])
        line, column = _position(source, len(source[: forbidden.start()].encode()))
        raise RegoCompileError(f"{name}() is not allowed: {_FORBIDDEN_WHY[name]}", line, column, source)
    return package


def _compile(source: str) -> RegoProgram:
    package = _check_text(source)
    interpreter = capi.Interpreter()
    interpreter.log_level = capi.LogLevel.NONE  # else rego-cpp prints errors on stdout
    interpreter.strict_built_in_errors = True
    try:
        interpreter.add_module(_POLICY_FILE, source)
    except capi.EngineError as exc:
        raise _parse_error(source, str(exc)) from None
    if not _ALLOW_RULE.search(source):
        raise RegoCompileError(f"the module defines no `allow` rule; Wardgate asks data.{package}.allow")
    decision = f"package {DECISION_PACKAGE}\n\ndefault allow := false\n\nallow := data.{package}.allow\n"
    try:
        interpreter.add_module("wardgate.rego", decision)
        bundle = interpreter.build(None, [ENTRYPOINT])
    except capi.EngineError as exc:
        raise _parse_error(source, str(exc)) from None
    # A bundle that failed to build still comes back, and querying it crashes the process.
    if not bundle.ok():
        errors = node_errors(capi.bundle_node(bundle._impl))
        raise RegoCompileError("; ".join(message for message, _ in errors) or "the module does not build")
    program = RegoProgram(source, package, interpreter, bundle)
    try:
        program.allow(RegoInput({"ctx": {}}), time_limit=PROBE_TIME_LIMIT)
    except RegoTimeoutError:
        raise RegoCompileError(
            f"evaluating the module on an empty ctx took longer than {PROBE_TIME_LIMIT:g} s"
        ) from None
    except RegoEvalError as exc:
        if exc.code in STATIC_CODES or exc.code == NOT_BOOLEAN:
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
