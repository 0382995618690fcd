"""PluginChain: ordered dispatch of hooks to the plugins of one Service config, failing closed.

    begin(inp) ─▶ request hooks in order (condition checked once per plugin; stop at the first answer)
               ─▶ [upstream, unless answered] ─▶ response_headers ─▶ response (only if buffered)

A plugin's exception becomes PluginError (the proxy answers 500) unless its entry is `fail_open`, in
which case the request is restored to what it was before that plugin and the chain goes on.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from wardgate.cluster.plugins.flow import HttpFlow, Request, Response
from wardgate.cluster.plugins.hooks import Hook, RequestHook, ResponseHeadersHook, ResponseHook
from wardgate.cluster.policy.engine import CompiledCondition, ConditionError, EvalInput

log = logging.getLogger(__name__)


class PluginError(Exception):
    """A plugin failed in a hook (or its condition failed); the request fails closed.

    The message names the plugin, the hook and the cause; it is for logs, never for clients.
    """

    def __init__(self, plugin: str, hook: str, detail: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}: {detail}")
        self.plugin = plugin
        self.hook = hook
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Entry:
    """One plugin of the chain with its pre-compiled condition (None: always applies)."""

    name: str
    plugin: object
    condition: CompiledCondition | None = None
    fail_open: bool = False

    def has(self, hook: type[Hook]) -> bool:
        return callable(getattr(self.plugin, hook.name, None))


class PluginChain:
    """The ordered plugins of one Service config; immutable, shared by all requests."""

    __slots__ = ("_buffers", "_entries")

    def __init__(self, entries: Sequence[Entry] = ()) -> None:
        self._entries = tuple(entries)
        self._buffers = any(e.has(ResponseHook) for e in self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._entries)

    def begin(self, inp: EvalInput) -> ChainRun:
        return ChainRun(self._entries, inp, self._buffers)


def _snapshot(flow: HttpFlow) -> tuple[Request, Response | None]:
    r = flow.request
    request = Request(r.method, r.path, r.query, r.headers.copy(), r.body)
    resp = flow.response
    response = None if resp is None else Response(resp.status, resp.headers.copy(), resp.body)
    return request, response


class ChainRun:
    """One request's pass through a chain: which plugins applied and ran, who answered, fail-open notes."""

    __slots__ = ("_entries", "_inp", "_may_buffer", "_ran", "answered_by", "notes", "timings")

    def __init__(self, entries: tuple[Entry, ...], inp: EvalInput, may_buffer: bool) -> None:
        self._entries = entries
        self._inp = inp
        self._may_buffer = may_buffer
        self._ran: list[Entry] = []
        self.answered_by: str | None = None
        self.notes: list[str] = []
        self.timings: list[tuple[str, str, float, float, str | None]] = []
        """(plugin, hook, started, ended (perf_counter), error or None) per hook call, for tracing."""

    def _applies(self, entry: Entry) -> bool:
        if entry.condition is None:
            return True
        try:
            return entry.condition(self._inp)
        except ConditionError as exc:
            if not entry.fail_open:
                raise PluginError(entry.name, "condition", str(exc)) from exc
            self._note(entry, "condition", str(exc))
            return False

    def _note(self, entry: Entry, hook: str, detail: str) -> None:
        log.warning("plugin %r failed in %s (failOpen, going on): %s", entry.name, hook, detail)
        self.notes.append(f"plugin {entry.name!r} failed in {hook} (failOpen): {detail}")

    async def _call(self, entry: Entry, hook: Hook) -> None:
        method = getattr(entry.plugin, hook.name, None)
        if method is None:
            return
        saved = _snapshot(hook.flow) if entry.fail_open else None
        started = time.perf_counter()
        error: str | None = None
        try:
            result = method(hook.flow)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            error = detail = str(exc) or type(exc).__name__
            if saved is None:
                raise PluginError(entry.name, hook.name, detail) from exc
            hook.flow.request, hook.flow.response = saved
            self._note(entry, hook.name, detail)
        finally:
            self.timings.append((entry.name, hook.name, started, time.perf_counter(), error))

    async def request(self, flow: HttpFlow) -> None:
        """Run the request phase; raises PluginError. Stops at the first plugin that answers."""
        hook = RequestHook(flow)
        for entry in self._entries:
            if not self._applies(entry):
                continue
            self._ran.append(entry)
            await self._call(entry, hook)
            if flow.response is not None:
                self.answered_by = entry.name
                return

    @property
    def wants_response_body(self) -> bool:
        """True when a plugin that ran has a `response` hook: the upstream response must be buffered."""
        return self._may_buffer and any(e.has(ResponseHook) for e in self._ran)

    async def response_headers(self, flow: HttpFlow) -> None:
        hook = ResponseHeadersHook(flow)
        for entry in self._ran:
            await self._call(entry, hook)

    async def response(self, flow: HttpFlow) -> None:
        hook = ResponseHook(flow)
        for entry in self._ran:
            await self._call(entry, hook)
