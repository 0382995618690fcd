"""Bounds that must hold inside library calls and value conversion, not only between VM instructions.

The freeze tests run in a child process with a timeout: the defect they guard against deadlocked the
whole process (a memory error while lupa built Lua tables unwound past the GIL), so run in-process a
regression would hang the test suite instead of failing it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cluster.plugins.helpers import lua, make_flow
from wardgate.cluster.plugins.builtin.lua import LuaScriptError

REPO = Path(__file__).resolve().parents[3]
LIMIT = 0.25
SLACK = 2 * LIMIT + 0.15
BIG = 'local a = string.rep("x", 16 * 1024 * 1024) .. "a" local b = string.rep("x", 16 * 1024 * 1024) .. "b" '
QUADRATIC = 'local s = string.rep("a", 4e6) local p = string.rep("a", 2e6) .. "b" '

CHILD = """
import asyncio, sys, time
from tests.cluster.plugins.helpers import lua, make_flow
shape, script = sys.argv[1], sys.argv[2]
size = 7_000_000
items = {"numbers": b"1", "arrays": b"[]", "objects": b"{}", "strings": b'"abcdefgh"'}[shape]
body = b'{"a":[' + b",".join([items] * (size // (len(items) + 1))) + b"]}"
async def main():
    plugin = lua(script, timeLimit="5s", maxInstructions=1_000_000_000, maxMemory=16 * 1024 * 1024)
    flow = make_flow(body=body)
    if "bodyMap" in script:
        import orjson
        flow.ctx["request"]["http"]["bodyMap"] = orjson.loads(body)
    started = time.perf_counter()
    try:
        await plugin.request(flow)
        print("answered", flush=True)
    except Exception as exc:
        print("failed:", exc, flush=True)
    good = make_flow(body=b'{"model":"m"}')
    await lua("function onRequest(ctx) json.decode(wardgate.req.getRequestBody()) end").request(good)
    print("next request served", round(time.perf_counter() - started, 2), flush=True)
asyncio.run(main())
"""

SCRIPTS = {
    "seed decode": "function onRequest(ctx) local body = json.decode(octelium.req.getRequestBody()) end",
    "ctx bodyMap": "function onRequest(ctx) local n = #ctx.request.http.bodyMap.a end",
    "decode kept twice": "function onRequest(ctx) local b = wardgate.req.getRequestBody() "
    "local x, y = json.decode(b), json.decode(b) end",
}


@pytest.mark.parametrize("shape", ["numbers", "objects", "strings"])
@pytest.mark.parametrize("script", list(SCRIPTS), ids=list(SCRIPTS))
def test_a_large_body_fails_the_request_not_the_process(shape: str, script: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, shape, SCRIPTS[script]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "answered" or "limit (" in lines[0], lines
    assert lines[1].startswith("next request served"), lines


HOSTILE = [
    ("string.rep in a loop", 'while true do local s = string.rep("x", 30000000) end'),
    ("string.rep with a separator", 'while true do local s = string.rep("ab", 8e6, "") end'),
    ("string.rep of nothing, 1e15 times", 'local s = string.rep("", 1e15) while true do end'),
    ("string.upper of 16 MiB", BIG + "while true do local u = a:upper() end"),
    ("string.format of 16 MiB", BIG + 'while true do local u = string.format("%s", a) end'),
    ("utf8.len of 16 MiB", BIG + "while true do local n = utf8.len(a) end"),
    ("tonumber of 16 MiB", BIG + "while true do local n = tonumber(a) end"),
    ("== on 16 MiB strings", BIG + "local c = 0 while true do if a == b then c = c + 1 end end"),
    ("< on 16 MiB strings", BIG + "local c = 0 while true do if a < b then c = c + 1 end end"),
    (
        "table.concat",
        'local t = {} for i = 1, 1000 do t[i] = string.rep("y", 16000) end while true do local s = table.concat(t) end',
    ),
    ("plain find, n*m", QUADRATIC + "while true do s:find(p, 1, true) end"),
    ("find without specials, n*m", QUADRATIC + "while true do s:find(p) end"),
    ("strings.contains, n*m", QUADRATIC + "while true do strings.contains(s, p) end"),
    ("table.sort of 3M numbers", "local t = {} for i = 1, 3e6 do t[i] = (i * 7919) % 1000003 end table.sort(t)"),
    ("table.sort with a C comparator", "local t = {} for i = 1, 3e6 do t[i] = i end table.sort(t, rawequal)"),
    ("table.move over 1e12 slots", "table.move({}, 1, 1e12, 1)"),
    ("table.move backwards over 1e12 slots", "local t = {} table.move(t, 1, 1e12, 2)"),
    (
        "table.insert at the front",
        "local t = {} for i = 1, 2e6 do t[i] = i end while true do table.insert(t, 1, 0) table.remove(t, 1) end",
    ),
    ("json.decode of 8 MB", 'local s = "[" .. string.rep("1,", 4e6) .. "1]" while true do json.decode(s) end'),
    ("json.encode of 1M strings", 'local t = {} for i = 1, 1e6 do t[i] = "abc" end while true do json.encode(t) end'),
    ("base64.encode of 16 MiB", BIG + "while true do base64.encode(a) end"),
    ("strings.toLower of 16 MiB", BIG + "while true do strings.toLower(a) end"),
    ("strings.split into 4M parts", 'local s = string.rep("a,", 4e6) while true do strings.split(s, ",") end'),
    ("getRequestBody in a loop", "while true do wardgate.req.getRequestBody() end"),
]


@pytest.mark.parametrize("source", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
async def test_time_limit_holds_inside_library_calls(source: str) -> None:
    plugin = lua(f"function onRequest(ctx) {source} end", timeLimit="250ms", maxInstructions=1_000_000_000)
    started = time.perf_counter()
    with pytest.raises(LuaScriptError, match="limit"):
        await plugin.request(make_flow(body=b"x" * 1_000_000))
    assert time.perf_counter() - started < SLACK


BACKTRACKING = [
    ("find, three lazy captures", 'local s = string.rep("xyz", 87) s:find("(.-)x(.-)y(.-)z$")'),
    ("match, three lazy captures", 'local s = string.rep("xyz", 87) s:match("(.-)x(.-)y(.-)zq")'),
    ("gsub, quadratic", 'local s = string.rep("a", 100000) s:gsub("a-b", "")'),
    ("gmatch, quadratic", 'local s = string.rep("a", 100000) for w in s:gmatch("a*b") do end'),
    ("a method call", 'local s = string.rep("ab", 200) s:match("(a*)*b(.*)(.*)c")'),
    ("on the request body", 'wardgate.req.getRequestBody():find("(.-)(.-)(.-)(.-)!")'),
]


@pytest.mark.parametrize("source", [c[1] for c in BACKTRACKING], ids=[c[0] for c in BACKTRACKING])
async def test_runaway_patterns_are_refused_before_they_run(source: str) -> None:
    plugin = lua(f"function onRequest(ctx) {source} end", timeLimit="250ms")
    started = time.perf_counter()
    with pytest.raises(LuaScriptError, match="pattern could take over"):
        await plugin.request(make_flow(body=b"a" * 260))
    assert time.perf_counter() - started < LIMIT


async def test_patterns_on_request_data_still_work() -> None:
    script = textwrap.dedent("""
        function onRequest(ctx)
          local body = wardgate.req.getRequestBody()
          local model = body:match('"model"%s*:%s*"([^"]*)"')
          local words = 0
          for _ in body:gmatch("%a+") do words = words + 1 end
          local trimmed = ("  hi  "):gsub("^%s+", ""):gsub("%s+$", "")
          assert(("a.b.c"):find(".", 1, true) == 2 and ("a,b"):gsub(",", ";") == "a;b")
          wardgate.req.setRequestHeader("x-model", model .. " " .. words .. " " .. trimmed)
        end
    """)
    flow = make_flow(body=b'{"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "hello there"}]}')
    await lua(script).request(flow)
    assert flow.request.headers["x-model"] == "gemini-2.5-pro 9 hi"


async def test_bound_errors_are_not_swallowed_by_pcall() -> None:
    script = """
function onRequest(ctx)
  local ok = pcall(function() while true do end end)
  wardgate.req.setRequestHeader("x-swallowed", tostring(ok))
end
"""
    flow = make_flow()
    with pytest.raises(LuaScriptError, match="time limit"):
        await lua(script, timeLimit="100ms", maxInstructions=1_000_000_000).request(flow)
    assert "x-swallowed" not in flow.request.headers


async def test_policy_errors_can_be_caught_and_the_request_still_fails_closed_on_bounds() -> None:
    script = """
function onRequest(ctx)
  local ok, err = pcall(wardgate.req.setRequestHeader, "Host", "evil")
  local c = http.client()
  local ok2 = pcall(c.setBaseURL, c, "http://not-allowed.example")
  wardgate.req.setRequestHeader("x-caught", tostring(ok) .. " " .. tostring(ok2))
end
"""
    flow = make_flow()
    await lua(script).request(flow)
    assert flow.request.headers["x-caught"] == "false false"
    assert "Host" not in flow.request.headers or flow.request.headers["Host"] != "evil"


async def test_memory_near_the_limit_fails_the_call_cleanly() -> None:
    script = """
function onRequest(ctx)
  local keep = {}
  pcall(function() while true do keep[#keep + 1] = string.rep("m", 4096) .. #keep end end)
  local body = wardgate.req.getRequestBody()
  keep[#keep + 1] = body
end
"""
    plugin = lua(script, maxMemory=8 * 1024 * 1024)
    with pytest.raises(LuaScriptError, match="memory limit"):
        await plugin.request(make_flow(body=b"b" * 1_000_000))
    good = make_flow(body=b"{}")
    await lua("function onRequest(ctx) json.decode(wardgate.req.getRequestBody()) end").request(good)
