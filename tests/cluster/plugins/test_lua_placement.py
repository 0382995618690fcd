"""Where a Lua step runs: short steps on the event loop, long ones (and large bodies) on a thread, for good.

A thread handoff costs more than a short script's whole step, so a plugin starts inline; the first step over
INLINE_BUDGET moves it to threads for its life, after which no step of it can hold up the loop.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from tests.cluster.plugins.helpers import lua, make_flow
from wardgate.cluster.plugins.builtin import lua as lua_module
from wardgate.cluster.plugins.builtin.lua import INLINE_MAX_BODY, LuaScriptError
from wardgate.cluster.plugins.builtin.lua_api import FlowApi

SCRIPT = """
function onRequest(ctx)
  if octelium.req.getPath() == "/slow" then
    local n = 0
    for i = 1, 1e12 do n = n + 1 end
  end
  octelium.req.setRequestHeader("x-ok", "yes")
end
"""


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingExecutor]:
    pool = CountingExecutor()
    monkeypatch.setattr(lua_module, "_EXECUTOR", pool)
    yield pool
    pool.shutdown(wait=True)


async def _max_loop_gap(work: asyncio.Task[Any]) -> float:
    """The longest the event loop went without running this ticker while `work` ran (seconds)."""
    worst, last = 0.0, time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    return worst


async def test_short_steps_run_on_the_loop(executor: CountingExecutor) -> None:
    plugin = lua(SCRIPT)
    for _ in range(50):
        flow = make_flow(path="/fast")
        await plugin.request(flow)
        assert flow.request.headers["x-ok"] == "yes"
    assert plugin.inline
    assert executor.submitted == 0


async def test_a_large_body_always_goes_to_a_thread(executor: CountingExecutor) -> None:
    plugin = lua(SCRIPT)
    flow = make_flow(body=b"x" * (INLINE_MAX_BODY + 1), path="/fast")
    await plugin.request(flow)
    assert flow.request.headers["x-ok"] == "yes"
    assert executor.submitted == 1
    assert plugin.inline  # the size decided, not the plugin's history


async def test_one_long_step_moves_the_plugin_to_threads_for_good(executor: CountingExecutor) -> None:
    plugin = lua(SCRIPT, timeLimit="300ms", maxInstructions=1_000_000_000)
    with pytest.raises(LuaScriptError, match="time limit"):
        await plugin.request(make_flow(path="/slow"))  # inline: it may hold the loop this once
    assert not plugin.inline
    assert executor.submitted == 0

    # From now on every step is on a thread: a step that runs to its time limit leaves the loop free.
    async def slow() -> str:
        try:
            await plugin.request(make_flow(path="/slow"))
        except LuaScriptError as exc:
            return str(exc)
        return "no error"

    for _ in range(3):
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(slow())
            gap = await _max_loop_gap(task)
        assert "time limit" in task.result()
        assert gap < 0.1, f"the loop was held {gap * 1000:.0f} ms by a step on a thread"
    flow = make_flow(path="/fast")
    await plugin.request(flow)
    assert flow.request.headers["x-ok"] == "yes"
    assert executor.submitted == 4
    assert not plugin.inline


def _burn(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


@pytest.mark.parametrize("in_gc", [True, False])
async def test_a_garbage_collection_inside_a_step_does_not_count_as_the_steps_time(
    executor: CountingExecutor, monkeypatch: pytest.MonkeyPatch, in_gc: bool
) -> None:
    """Python's collector may run inside any step (a full collection of a node's heap takes milliseconds):
    that time is not the script's. The same time spent by the step itself does move the plugin."""
    original = FlowApi.set_header
    slow_gc = [False]

    def during_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and slow_gc[0]:
            _burn(3 * lua_module.INLINE_BUDGET)

    def set_header(self: Any, name: object, value: object) -> None:
        if in_gc:
            slow_gc[0] = True
            try:
                gc.collect()
            finally:
                slow_gc[0] = False
        else:
            _burn(3 * lua_module.INLINE_BUDGET)
        original(self, name, value)

    monkeypatch.setattr(FlowApi, "set_header", set_header)
    plugin = lua(SCRIPT)  # after the patch: the runtime binds the API's methods when it is made
    gc.callbacks.append(during_gc)  # after the clock's own callback: the burn is inside the collection
    try:
        flow = make_flow(path="/fast")
        await plugin.request(flow)
    finally:
        gc.callbacks.remove(during_gc)
    assert flow.request.headers["x-ok"] == "yes"
    assert plugin.inline is in_gc
