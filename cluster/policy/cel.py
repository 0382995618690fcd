"""CEL conditions: compile once per source, evaluate against one Activation per request.

The only module that imports a CEL engine. The engine is cel-expr-python (the CEL
C++ runtime behind a pybind11 module); docs/cel-engines.md has the measurements
behind that choice.

    check(source)                              admission: raises CelCompileError with the position
    Compiler.compile(source) -> Program        pipeline build: ~45 µs, cached by sha256(source)
    Activation({"ctx": {...}})                 per request; ctx is converted on first use, once
    Program.evaluate_bool(activation) -> bool  per rule: ~2-4 µs

What expressions see:

- ``ctx`` is declared as ``map(string, dyn)``; nothing else is declared, so any other
  identifier is a compile error. Type errors between literals (``1 + "a"``) are compile
  errors; type errors involving ``ctx`` values are evaluation errors, because those
  values are ``dyn`` until a request supplies them.
- Numbers keep their JSON shape: a JSON integer is a CEL ``int`` (``uint`` from 2**63 to
  2**64 - 1), a JSON number with a fraction or exponent is a ``double``. Comparisons
  between int, uint and double are numeric, as the CEL spec's heterogeneous equality
  and ordering say: ``temperature < 0.7`` is true for ``0`` and ``0.5`` and false for
  ``1`` and ``1.0``; ``max_tokens == 100.0`` is true for ``100``; ``n in [1.0, 2.0]``
  is true for ``1`` (only between literals, ``1 in [1.0]``, does the checker reject
  the mix). Arithmetic does not mix: ``temperature * 2.0`` fails on an int temperature;
  write ``double(ctx.request.http.bodyMap.temperature) * 2.0``. Integers outside
  int64/uint64 (which orjson already parses as doubles) become doubles here too.
- A missing map key is an evaluation error (``CelEvalError``), never false. Guard with
  ``has()``: ``has(ctx.a.b) && ctx.a.b == 1`` is false when ``b`` is missing.
- Extensions beyond the standard library: the cel-go "strings" library
  (``lowerAscii``, ``upperAscii``, ``replace``, ``split``, ``join``, ``trim``,
  ``substring``, ``indexOf``, ``format`` ...) and ``list.hasAll(a, ...)`` /
  ``list.hasAny(a, ...)`` with 1 to 8 arguments of any type, compared with CEL
  equality (``true`` does not equal ``1``; ``1`` equals ``1.0``). They run as the
  engine's native ``sets.contains(list, [a, ...])`` / ``sets.intersects(list, [a, ...])``
  (the cel-go "sets" library, which expressions may call directly too): no function
  is implemented in Python, see _engine() for why.
- ``matches`` is RE2: linear time, no backreferences.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from cel_expr_python import cel as _cel  # type: ignore[import-untyped]
from cel_expr_python.ext import ext_strings as _ext_strings  # type: ignore[import-untyped]

from wardgate.cluster.policy import cel_ast, projection
from wardgate.cluster.policy.projection import Paths

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "Activation",
    "CelCompileError",
    "CelError",
    "CelEvalError",
    "Compiler",
    "Program",
    "check",
]

MAX_EXPRESSION_LENGTH: Final = 10_000
DEFAULT_CACHE_SIZE: Final = 4096
MAX_MEMBER_ARGS: Final = 8

_INT64_MIN: Final = -(2**63)
_UINT64_END: Final = 2**64
_MAX_NESTING: Final = 512
_POSITION = re.compile(r"<input>:(-?\d+):(-?\d+):")


class CelError(Exception):
    """Base of the CEL errors.

    CelError
    ├── CelCompileError   the source is not a valid expression (apply time)
    └── CelEvalError      the expression failed on this request's values
    """


class CelCompileError(CelError):
    """The expression does not parse, does not type-check or is too long.

    ``line`` and ``column`` are 1-based and point at the first error when the engine
    reports a position, else None. ``message`` is the engine's text, which includes a
    caret under the offending spot.
    """

    def __init__(self, expression: str, message: str, line: int | None = None, column: int | None = None) -> None:
        self.expression = expression
        self.message = message
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"invalid CEL expression{where}: {message}")


class CelEvalError(CelError):
    """Evaluation failed: a missing key, a type mismatch, a non-bool condition, a bad ctx."""


class _Type(Protocol):
    """A cel-expr-python Type (the engine ships no py.typed: these Protocols type its API)."""

    def name(self) -> str: ...


class _Value(Protocol):
    """An evaluation result; an error is a Value whose type is ERROR, not an exception."""

    def value(self) -> object: ...
    def plain_value(self) -> object: ...
    def type(self) -> _Type: ...


class _Expression(Protocol):
    """A checked expression, bound to the Env that compiled it."""

    def eval(self, activation: object) -> _Value: ...
    def return_type(self) -> _Type: ...
    def serialize(self) -> bytes: ...


class _Env(Protocol):
    """Declarations (ctx, extensions) plus the compiler and runtime built from them."""

    def compile(self, expression: str) -> _Expression: ...
    def deserialize(self, serialized: bytes) -> _Expression: ...
    def Activation(self, data: Mapping[str, object]) -> object: ...


@dataclass(frozen=True, slots=True)
class _Engine:
    env: _Env
    probe: _Expression


def _member_decl(name: str) -> object:
    """Declarations only: the checker types ``list.<name>(a, ...)``; _native() replaces the calls."""
    overloads = [
        _cel.Overload(
            f"list_{name}_{n}",
            return_type=_cel.Type.BOOL,
            parameters=[_cel.Type.List(_cel.Type.DYN)] + [_cel.Type.DYN] * n,
            is_member=True,
        )
        for n in range(1, MAX_MEMBER_ARGS + 1)
    ]
    return _cel.FunctionDecl(name, overloads)


@functools.cache
def _engine() -> _Engine:
    # No function here is implemented in Python. cel-expr-python 0.1.3 leaks every call
    # of a Python implementation: its PyCelFunctionAdapter::Invoke never releases the
    # argument tuple it builds, so the arguments converted to Python (a whole list for
    # hasAll) stay allocated, ~400 bytes per call. hasAll and hasAny are declared here
    # for the checker and run as the engine's native sets.contains / sets.intersects.
    lists = _cel.CelExtension("wardgate.lists", [_member_decl(name) for name in cel_ast.SET_FUNCTIONS])
    env = cast(
        _Env,
        _cel.NewEnv(
            config=_cel.NewEnvConfigFromYaml("extensions:\n  - name: sets\n"),
            variables={"ctx": _cel.Type.Map(_cel.Type.STRING, _cel.Type.DYN)},
            extensions=[lists, _ext_strings.ExtStrings()],
        ),
    )
    return _Engine(env=env, probe=env.compile("size(ctx) >= 0"))


def _compile_error(source: str, exc: Exception) -> CelCompileError:
    text = str(exc).removeprefix("INVALID_ARGUMENT: ").removesuffix(" [INVALID_ARGUMENT]")
    match = _POSITION.search(text)
    line = column = None
    if match and int(match.group(1)) > 0:
        line, column = int(match.group(1)), int(match.group(2))
    return CelCompileError(source, text, line, column)


def _compile(source: str) -> tuple[_Expression, Paths]:
    """The checked expression (hasAll/hasAny made native, see _engine) and the ctx paths it reads."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CelCompileError(
            source,
            f"expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_LENGTH}",
        )
    try:
        expr = _engine().env.compile(source)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise _compile_error(source, exc) from exc
    try:
        analysis = cel_ast.analyze(expr.serialize())
    except cel_ast.AstError as exc:
        raise CelCompileError(source, str(exc)) from exc
    if analysis.rewritten is not None:
        expr = _engine().env.deserialize(analysis.rewritten)
    return expr, analysis.paths


def _plain_scalar(value: object) -> object:
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, _cel.Type):
        return cast(_Type, value).name()
    return value


def _plain(value: object) -> object:
    """Finish the engine's plain_value() in place: bytes for bytearray, names for types.

    Iterative, because results can nest as deep as a request body.
    """
    if not isinstance(value, list | dict):
        return _plain_scalar(value)
    stack: list[list[object] | dict[object, object]] = [value]
    while stack:
        node = stack.pop()
        pairs: Iterable[tuple[Any, object]] = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in pairs:
            if isinstance(item, list | dict):
                stack.append(item)
            elif isinstance(item, (bytearray, _cel.Type)):
                node[key] = _plain_scalar(item)
    return value


def _error_text(value: _Value) -> str:
    return str(value.value()).removeprefix("UNKNOWN: ")


def _as_cel_data(value: object, path: str, depth: int = 0) -> object:
    """A copy of ``value`` that the engine accepts, or CelEvalError naming what it cannot."""
    if depth > _MAX_NESTING:
        raise CelEvalError(f"ctx is nested deeper than {_MAX_NESTING} levels at {path}")
    if value is None or isinstance(value, bool | str | float | bytes):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value < _UINT64_END:
            return value
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        out: dict[object, object] = {}
        for key, item in value.items():
            if not isinstance(key, str | int) or (type(key) is int and not _INT64_MIN <= key < _UINT64_END):
                raise CelEvalError(f"ctx map key {key!r} at {path} is not a CEL map key")
            out[key] = _as_cel_data(item, f"{path}[{key!r}]", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_as_cel_data(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise CelEvalError(f"ctx value at {path} is a {type(value).__name__}, which CEL cannot hold")


def _engine_activation(ctx: Mapping[str, object]) -> object:
    """An engine activation for ``ctx`` that is known to evaluate: checked by the probe, else converted
    value by value (CelEvalError naming a value CEL cannot hold)."""
    engine = _engine()
    handle = engine.env.Activation(ctx)
    if engine.probe.eval(handle).value() is True:
        return handle
    handle = engine.env.Activation({name: _as_cel_data(value, name) for name, value in ctx.items()})
    probe = engine.probe.eval(handle)
    if probe.value() is not True:
        raise CelEvalError(f"ctx cannot be evaluated: {_error_text(probe)}")
    return handle


class _Conversion:
    """One projection of ctx handed to the engine. The engine converts it lazily, at the first evaluation,
    and reports a value it cannot hold as that evaluation's error; so a conversion is `checked` (by
    _engine_activation's probe) only after an evaluation failed, which keeps the probe off the common path."""

    __slots__ = ("checked", "handle", "key", "paths", "variables")

    def __init__(self, paths: Paths, key: object, variables: Mapping[str, object]) -> None:
        self.paths = paths
        self.key = key
        self.variables = variables
        self.handle = _engine().env.Activation(variables)
        self.checked = False


class Activation:
    """One request's variables, converted to CEL values once and shared by every Program.

    ``ctx`` is the variables mapping ``{"ctx": {...}}``, holding plain dicts, lists,
    str, int, float, bool, None and bytes, as a JSON parser produces them. Integers
    beyond int64/uint64 become doubles and tuples become lists. A datetime cannot go
    inside a map: pass time as an RFC 3339 string (``timestamp(ctx.time)`` in CEL).

    Construction is free. A Program is handed only the parts of ``ctx`` its expression
    names (see projection.py): ``ctx.request.http.bodyMap.model == "x"`` converts one
    string, not the body. A set of parts that one already converted covers is read from that
    conversion (a Service's dynamic-config rules convert what its policies read too, so the
    policies convert nothing more). Otherwise the first evaluation of each set of parts converts them
    (about 0.35 µs per JSON value: ~20 µs for a 1 KiB chat body, ~360 µs for 300
    messages, ~30 ms for a 1 MiB one) and later Programs that read the same parts
    reuse it. Do not mutate ``ctx`` while the Activation is in use. If ``ctx`` is
    missing or is not a map, every evaluation raises CelEvalError saying so; if a
    part holds a value CEL cannot represent (a set, a datetime, a None or float map
    key), every evaluation that reads that part does.

    Nesting: the engine converts recursively in C++. Here 5,500 levels convert and
    6,000 overflow the C stack and kill the process. JSON parsers stop far earlier
    (orjson at 1,024 levels, the stdlib json at the recursion limit), so contexts
    built from parsed JSON are safe; code that builds ctx some other way must keep
    to that depth.

    One request, one task: the lazy conversion is not locked.
    """

    __slots__ = ("_ctx", "_errors", "_handles", "_made")

    def __init__(self, ctx: Mapping[str, object]) -> None:
        self._ctx = ctx
        self._handles: dict[object, _Conversion] = {}
        self._errors: dict[object, CelEvalError] = {}
        self._made: list[_Conversion] = []
        """Each conversion made: a later set of paths that one covers reuses it."""

    def _conversion(self, paths: Paths, key: object) -> _Conversion:
        """The conversion holding the ``paths`` of ctx (``key`` is projection.key(paths))."""
        conversion = self._handles.get(key)
        if conversion is not None:
            return conversion
        for made in self._made:
            if projection.covers_by_key(made.key, made.paths, key, paths):
                self._handles[key] = made
                return made
        error = self._errors.get(key)
        if error is not None:
            raise CelEvalError(str(error))
        ctx = self._ctx.get("ctx") if isinstance(self._ctx, Mapping) else None
        variables = self._ctx
        if paths is not None and isinstance(ctx, Mapping):
            variables = {**self._ctx, "ctx": projection.project(ctx, paths)}
        conversion = self._handles[key] = _Conversion(paths, key, variables)
        self._made.append(conversion)
        return conversion

    def _recheck(self, conversion: _Conversion) -> bool:
        """An evaluation on ``conversion`` failed: True when the conversion was at fault (it is replaced by a
        value-by-value one, or dropped), so the Program should ask for its conversion again and retry."""
        if conversion.checked:
            return False
        conversion.checked = True
        if _engine().probe.eval(conversion.handle).value() is True:
            return False  # the conversion is sound: the failure is the expression's own
        try:
            conversion.handle = _engine_activation(conversion.variables)
        except CelEvalError as exc:
            # Only the conversion's own paths fail; Programs that reused it for fewer paths convert their own.
            self._made.remove(conversion)
            for key in [k for k, c in self._handles.items() if c is conversion]:
                del self._handles[key]
            self._errors[conversion.key] = exc
        return True


class Program:
    """A compiled expression. Immutable; safe to share across requests and tasks."""

    __slots__ = ("_expr", "_key", "paths", "source")

    def __init__(self, source: str, expr: _Expression, paths: Paths = projection.ALL) -> None:
        self.source = source
        self.paths = paths
        """The ctx fields the expression reads (projection.ALL: all of ctx)."""
        self._expr = expr
        self._key = projection.key(paths)

    def __repr__(self) -> str:
        return f"Program({self.source!r})"

    def reading(self, paths: Paths) -> Program:
        """This expression, handed ``paths`` (a superset of its own): Programs given one tree share one
        conversion per request, where each of their own would make one conversion (and engine activation)
        apiece."""
        return Program(self.source, self._expr, paths)

    def _eval(self, activation: Activation) -> tuple[_Value, object]:
        """The engine's result and its value(); a failure that the conversion caused is retried on a corrected
        conversion (each is checked at most once, so this ends). A bool result is never an error: one call."""
        while True:
            conversion = activation._conversion(self.paths, self._key)
            try:
                value = self._expr.eval(conversion.handle)
                result = value.value()
                if result is True or result is False or value.type().name() != "ERROR":
                    return value, result
            except Exception:
                if not activation._recheck(conversion):
                    raise
                continue
            if not activation._recheck(conversion):
                return value, result

    def evaluate(self, activation: Activation) -> object:
        """The result as a plain Python value: bool, int, float, str, bytes, None, list, dict.

        Timestamps and durations come back as datetime and timedelta, a type as its
        name. Raises CelEvalError on any evaluation error.
        """
        try:
            value, _ = self._eval(activation)
            kind = value.type().name()
            if kind != "ERROR":
                return _plain(value.plain_value())
        except Exception as exc:
            raise CelEvalError(f"{self.source!r}: {exc}") from exc
        raise CelEvalError(f"{self.source!r}: {_error_text(value)}")

    def evaluate_bool(self, activation: Activation) -> bool:
        """The result of a condition. Raises CelEvalError on an error or a non-bool result."""
        try:
            value, result = self._eval(activation)
        except Exception as exc:
            raise CelEvalError(f"{self.source!r}: {exc}") from exc
        if result is True or result is False:
            return result
        kind = value.type().name()
        if kind == "ERROR":
            raise CelEvalError(f"{self.source!r}: {_error_text(value)}")
        raise CelEvalError(f"{self.source!r}: condition evaluated to {kind}, not bool")


class Compiler:
    """Compiles sources into Programs, caching the last ``max_entries`` by sha256(source).

    Compiling the same source again returns the same Program object. Safe to call from
    several threads; the engine holds the GIL while it compiles (~45 µs).
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._programs: OrderedDict[bytes, Program] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._programs)

    def compile(self, source: str) -> Program:
        """The Program for ``source``. Raises CelCompileError."""
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
        program = Program(source, *_compile(source))
        with self._lock:
            existing = self._programs.get(key)
            if existing is not None:
                self._programs.move_to_end(key)
                return existing
            self._programs[key] = program
            if len(self._programs) > self._max_entries:
                self._programs.popitem(last=False)
        return program


def check(source: str, *, expect_bool: bool = True) -> None:
    """Validate a source at apply time. Raises CelCompileError with the position.

    With ``expect_bool`` (conditions), an expression whose static type is neither
    bool nor dyn (``1 + 2``, ``"gpt-4o"``) is rejected too; a dyn result is checked
    when it is evaluated.
    """
    expr, _ = _compile(source)
    if expect_bool:
        kind = expr.return_type().name()
        if kind not in ("BOOL", "DYN"):
            raise CelCompileError(source, f"a condition must be a bool; this expression is a {kind}")
