"""The Rego errors and Wardgate's own error codes, shared by the rego_* modules."""

from __future__ import annotations

from typing import Final

__all__ = [
    "BAD_INPUT",
    "INPUT_TOO_LARGE",
    "NOT_BOOLEAN",
    "TIME_LIMIT",
    "RegoCompileError",
    "RegoError",
    "RegoEvalError",
    "RegoTimeoutError",
]

# Error codes rego-cpp reports when running a rule that is wrong whatever the input;
# found by the apply-time probe, they are compile errors.
STATIC_CODES: Final = frozenset(
    {"rego_recursion_error", "wellformed_error", "rego_type_error", "rego_compile_error", "rego_parse_error"}
)
NOT_BOOLEAN: Final = "not_boolean"
TIME_LIMIT: Final = "time_limit"
BAD_INPUT: Final = "bad_input"
INPUT_TOO_LARGE: Final = "input_too_large"


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
