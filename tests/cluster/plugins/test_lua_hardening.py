"""The Lua sandbox under attack: every case fails its one request closed, and the next request works.

Each script misbehaves only on path /bad; on any other path it sets a header. The same plugin (and
so the same runtime pool) serves the bad request and then a good one.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.plugins.helpers import lua, make_flow
from wardgate.cluster.plugins.builtin.lua import LuaScriptError

TEMPLATE = """
function onRequest(ctx)
  if octelium.req.getPath() == "/bad" then
    %s
  end
  octelium.req.setRequestHeader("x-ok", "yes")
end
"""

CASES = [
    ("infinite loop", "while true do end", "instruction limit"),
    ("loop hidden in pcall", "while true do pcall(function() while true do end end) end", "limit"),
    (
        "loop in xpcall handler",
        "xpcall(function() error('x') end, function() while true do end end) while true do end",
        "limit",
    ),
    ("string.rep memory bomb", 'local s = string.rep("x", 1 << 40)', "too large"),
    ("string.rep of gigabytes", 'local s = string.rep("x", 3 * 1024 * 1024 * 1024)', "string too large"),
    ("string.rep over the memory cap", 'local s = string.rep("x", 100 * 1024 * 1024)', "memory limit"),
    ("string doubling", 'local s = "xxxxxxxx" for i = 1, 40 do s = s .. s end', "memory limit"),
    ("table growth", "local t = {} for i = 1, 1e9 do t[i] = {i} end", "memory limit"),
    ("memory error swallowed by pcall", "local t = {} while true do pcall(function() t[#t + 1] = {} end) end", "limit"),
    ("deep recursion", "local function f(n) return 1 + f(n + 1) end f(1)", ""),
    ("python global", 'python.eval("1")', "attempt to index a nil value (global 'python')"),
    ("python builtins", 'python.builtins.open("/etc/passwd")', "global 'python'"),
    ("string metatable", 'getmetatable("").__index.dump = nil', "attempt to index a boolean value"),
    ("string library is read-only", "string.upper = nil", "read-only"),
    ("load", 'load("return 1")()', "global 'load'"),
    ("loadstring", 'loadstring("return 1")()', "global 'loadstring'"),
    ("dofile", 'dofile("/etc/passwd")', "global 'dofile'"),
    ("require", 'require("os")', "global 'require'"),
    ("os", 'os.execute("id")', "global 'os'"),
    ("io", 'io.open("/etc/passwd")', "global 'io'"),
    ("debug", "debug.sethook()", "global 'debug'"),
    ("package", 'package.loadlib("libc.so.6", "system")', "global 'package'"),
    ("string.dump", "string.dump(onRequest)", "attempt to call a nil value (field 'dump')"),
    ("collectgarbage", 'collectgarbage("stop")', "global 'collectgarbage'"),
    ("coroutine", "coroutine.wrap(function() while true do end end)()", "global 'coroutine'"),
    ("python attributes", "local g = octelium.req.getPath.__globals__", "not accessible from Lua"),
    ("python class walk", "local c = octelium.req.getPath.__class__.__base__", "not accessible from Lua"),
    ("__gc finalizer", "setmetatable({}, {__gc = function() while true do end end})", "__gc"),
    ("nil index", "local body = nil\n    local x = body.messages", "attempt to index a nil value (local 'body')"),
    ("undeclared global", "leaked = ctx.user", "undeclared global 'leaked'"),
    (
        "error with a looping __tostring",
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
        "table value",
    ),
    ("ctx is read-only", 'ctx.user = "root"', "read-only"),
    ("exit with a bad status", "octelium.req.exit(42)", "100 to 599"),
]


@pytest.mark.parametrize(("source", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_fails_closed_then_recovers(source: str, expected: str) -> None:
    plugin = lua(TEMPLATE % source, maxMemory=16 * 1024 * 1024, timeLimit="2s")
    started = time.perf_counter()
    with pytest.raises(LuaScriptError) as caught:
        await plugin.request(make_flow(path="/bad"))
    assert time.perf_counter() - started < 3
    assert expected in str(caught.value)
    good = make_flow(path="/good")
    await plugin.request(good)
    assert good.request.headers["x-ok"] == "yes"


async def test_a_failed_runtime_is_discarded_not_reused() -> None:
    plugin = lua(TEMPLATE % "while true do end")
    idle, created = plugin.pool.stats
    assert (idle, created) == (1, 1)
    with pytest.raises(LuaScriptError):
        await plugin.request(make_flow(path="/bad"))
    assert plugin.pool.stats == (0, 0)
    await plugin.request(make_flow(path="/good"))
    assert plugin.pool.stats == (1, 1)


async def test_runtimes_are_reused_across_requests() -> None:
    plugin = lua(TEMPLATE % "")
    for _ in range(20):
        await plugin.request(make_flow(path="/good"))
    assert plugin.pool.stats == (1, 1)


async def test_time_limit_bounds_python_side_work() -> None:
    script = TEMPLATE % 'local s = string.rep("[1,2,3],", 20000) while true do json.decode("[" .. s .. "1]") end'
    plugin = lua(script, timeLimit="200ms", maxInstructions=1_000_000_000)
    started = time.perf_counter()
    with pytest.raises(LuaScriptError, match="limit"):
        await plugin.request(make_flow(path="/bad"))
    assert time.perf_counter() - started < 2


def test_top_level_loop_is_bounded_at_load() -> None:
    with pytest.raises(LuaScriptError, match="instruction limit"):
        lua("while true do end\nfunction onRequest(ctx) end")


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(LuaScriptError, match="line 4: 'end' expected"):
        lua("function onRequest(ctx)\n  local x = 1\n  if x then\nend")
