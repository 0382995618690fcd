"""Asking a compiled module's ``allow`` rule: the query, its time limit and reading its result.

    RegoProgram.allow(input) -> bool     per condition: ~0.15-0.3 ms, plus 25-100 µs of thread hand-off

rego.py has the time bound explained; rego_input.py builds what the query reads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Final

from wardgate.cluster.policy import projection
from wardgate.cluster.policy import rego_capi as capi
from wardgate.cluster.policy.rego_errors import BAD_INPUT, NOT_BOOLEAN, RegoEvalError, RegoTimeoutError
from wardgate.cluster.policy.rego_input import RegoInput, input_paths

__all__ = ["DEFAULT_TIME_LIMIT", "ENTRYPOINT", "WORKER_THREADS", "RegoProgram", "node_errors"]

DEFAULT_TIME_LIMIT: Final = 0.05
WORKER_THREADS: Final = 4
DECISION_PACKAGE: Final = "__wardgate__"
ENTRYPOINT: Final = f"{DECISION_PACKAGE}/allow"

_TRUE: Final = '{"expressions":[true]}'
_FALSE: Final = '{"expressions":[false]}'


def node_errors(node: int | None) -> list[tuple[str, str]]:
    """(message, code) of each error in an ErrorSeq/Error node; ErrorAst subtrees are skipped."""
    found: list[tuple[str, str]] = []
    if not node:
        return found
    kind = capi.node_type(node)
    errors: list[int | None] = [node] if kind == capi.ERROR else []
    if kind == capi.ERROR_SEQ:
        errors = [capi.node_get(node, i) for i in range(capi.node_size(node))]
    for error in errors:
        if not error or capi.node_type(error) != capi.ERROR:
            continue
        message = code = ""
        for i in range(capi.node_size(error)):
            child = capi.node_get(error, i)
            child_kind = capi.node_type(child) if child else None
            if child_kind == capi.ERROR_MESSAGE:
                message = capi.node_value(child)
            elif child_kind == capi.ERROR_CODE:
                code = capi.node_value(child)
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
    if not capi.output_ok(output):
        raise _eval_error(node_errors(capi.output_node(output)), "evaluation failed")
    text: str = capi.output_string(output)
    if text == _TRUE:
        return True
    if text == _FALSE:
        return False
    if text == "undefined":  # cannot happen with the default rule; answered without the Node API anyway
        return False
    if text.startswith("("):
        raise _eval_error(node_errors(capi.output_node(output)), text[:200])
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

    __slots__ = ("_bundle", "_interpreter", "_key", "_lock", "package", "paths", "sha256", "source")

    def __init__(self, source: str, package: str, interpreter: Any, bundle: Any) -> None:
        self.source = source
        self.package = package
        self.paths = input_paths(source)
        """The ctx fields the module reads (projection.ALL: the whole document)."""
        self._key = projection.key(self.paths)
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
        pointer = document.pointer(self.paths, self._key)
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
            document.abandon(self._key)
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
        if capi.set_input(interpreter, pointer) != 0:
            raise RegoEvalError(f"rego-cpp rejected the input: {capi.get_error(interpreter)}", BAD_INPUT)
        output = capi.query_entrypoint(interpreter, self._bundle._impl, ENTRYPOINT.encode())
        if not output:
            raise RegoEvalError(capi.get_error(interpreter) or "query failed")
        try:
            return _decode(output)
        except capi.EngineError as exc:
            raise RegoEvalError(f"reading the result failed: {exc}") from exc
        finally:
            capi.free_output(output)
