"""The Rego input document: ctx converted for rego-cpp through its C input builder.

Only the ctx fields a module names are converted (``input_paths``, projection.py),
and at most MAX_INPUT_VALUES values of them: rego-cpp's input is built one ctypes call
per value (~3 µs), so a 1 MiB JSON body of small values would hold the event loop for
~0.5 s before the query (and its time limit) even starts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Final

from wardgate.cluster.policy import projection
from wardgate.cluster.policy import rego_capi as capi
from wardgate.cluster.policy.projection import Paths
from wardgate.cluster.policy.rego_errors import BAD_INPUT, INPUT_TOO_LARGE, TIME_LIMIT, RegoEvalError

__all__ = ["MAX_INPUT_DEPTH", "MAX_INPUT_VALUES", "RegoInput", "input_paths"]

MAX_INPUT_DEPTH: Final = 512
MAX_INPUT_VALUES: Final = 20_000
"""Values (scalars, arrays, objects) one program's input may hold: ~60 ms of conversion at most."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_INPUT = re.compile(r"(?<![\w.])input(?!\w)")
_CTX_PATH = re.compile(rf"input\s*\.\s*ctx(?P<fields>(?:\s*\.\s*{_IDENT})+)")
_DOT = re.compile(r"\s*\.\s*")


class _TooLarge(Exception):
    pass


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
    return capi.input_str(handle, data)


def _push(handle: int, value: object, depth: int, budget: list[int]) -> int:
    """Push ``value`` on rego-cpp's input stack; returns the OR of the C status codes.

    ``budget[0]`` is how many more values (scalars, arrays, objects) may be pushed.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    if value is None:
        return capi.input_null(handle)
    if value is True or value is False:
        return capi.input_bool(handle, value)
    if isinstance(value, str):
        return _push_str(handle, value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return capi.input_int(handle, value)
        try:
            value = float(value)
        except OverflowError as exc:
            raise _BadInput("an integer is too large for a float") from exc
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadInput(f"{value} is not a JSON number")
        return capi.input_float(handle, value)
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
                status |= _push_str(handle, key) | _push(handle, item, depth + 1, budget) | capi.input_item(handle)
            except _BadInput as exc:
                exc.path.append(f"[{key!r}]")
                raise
        return status | capi.input_object(handle, len(value))
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            try:
                status |= _push(handle, item, depth + 1, budget)
            except _BadInput as exc:
                exc.path.append(f"[{index}]")
                raise
        return status | capi.input_array(handle, len(value))
    raise _BadInput(f"a {type(value).__name__} has no Rego form")


def _build_input(value: Mapping[str, object]) -> int:
    handle = capi.new_input()
    if not handle:
        raise RegoEvalError("rego-cpp could not allocate an input")
    try:
        if _push(handle, value, 0, [MAX_INPUT_VALUES]) != 0:
            raise RegoEvalError("rego-cpp rejected the input", BAD_INPUT)
    except _BadInput as exc:
        capi.free_input(handle)
        path = "".join(reversed(exc.path))
        raise RegoEvalError(f"input{path}: {exc}", BAD_INPUT) from None
    except _TooLarge:
        capi.free_input(handle)
        raise RegoEvalError(
            f"the input this policy reads holds more than {MAX_INPUT_VALUES} values; Rego conditions are capped there",
            INPUT_TOO_LARGE,
        ) from None
    except BaseException:
        capi.free_input(handle)
        raise
    return handle


def input_paths(source: str) -> Paths:
    """The ctx fields a module reads: every ``input`` must start a ``input.ctx.<field>...`` path, else ALL.

    A plain text check, comments and strings included: an extra path only costs a
    conversion, and any other use of ``input`` (``input[...]``, ``input.ctx[k]``,
    ``x := input``, ``with input as ...``) hands the module the whole document.
    """
    paths: dict[str, Paths | None] = {}
    for match in _INPUT.finditer(source):
        path = _CTX_PATH.match(source, match.start())
        if path is None:
            return projection.ALL
        projection.add_path(paths, _DOT.split(path["fields"].strip())[1:])
    return paths


class RegoInput:
    """One request's input document, converted for rego-cpp once per set of paths and shared by every program.

    ``value`` is the whole document, ``{"ctx": {...}}``. Construction is free. A program
    is handed only the ctx fields its module names (input_paths); the first evaluation
    of each such set converts those parts (~3-6 µs per JSON value) and later programs
    that read the same parts reuse it. A part holding more than MAX_INPUT_VALUES values
    fails the evaluation with INPUT_TOO_LARGE instead of converting for seconds; a value
    Rego cannot hold fails every evaluation that reads it (BAD_INPUT). An input left
    behind by a query that overran its time limit stays bound to that query and refuses
    further use. One request, one task: the lazy conversion is not locked.
    """

    __slots__ = ("_abandoned", "_errors", "_handles", "_value")

    def __init__(self, value: Mapping[str, object]) -> None:
        self._value = value
        self._handles: dict[object, int] = {}
        self._errors: dict[object, RegoEvalError] = {}
        self._abandoned: set[object] = set()

    def __del__(self) -> None:
        for handle in self._handles.values():
            capi.free_input(handle)

    def abandon(self, key: object) -> None:
        """The input of ``key`` stays with a query that overran; it is never used (nor freed) again."""
        self._abandoned.add(key)

    def pointer(self, paths: Paths = projection.ALL, key: object = None) -> int:
        """rego-cpp's input holding the ``paths`` of ctx (``key`` is projection.key(paths))."""
        if key in self._abandoned:
            raise RegoEvalError("this input belongs to a query that overran its time limit", TIME_LIMIT)
        handle = self._handles.get(key)
        if handle:
            return handle
        error = self._errors.get(key)
        if error is None:
            value = self._value
            ctx = value.get("ctx") if isinstance(value, Mapping) else None
            if paths is not None and isinstance(ctx, Mapping):
                value = {**value, "ctx": projection.project(ctx, paths)}
            try:
                handle = self._handles[key] = _build_input(value)
                return handle
            except RegoEvalError as exc:
                error = self._errors[key] = exc
        raise RegoEvalError(str(error), error.code)
