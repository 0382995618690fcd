"""The Lua API as scripts see it: json array/object rules, strings, the request and response calls."""

from __future__ import annotations

import json

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.cluster.plugins.helpers import lua, make_flow
from wardgate.cluster.plugins.builtin.lua import LuaScriptError
from wardgate.cluster.plugins.flow import Response


async def encode(expr: str, body: bytes = b"{}") -> object:
    plugin = lua(
        f"function onRequest(ctx)\n  local body = json.decode(wardgate.req.getRequestBody())\n"
        f"  wardgate.req.setRequestBody(json.encode({expr}))\nend"
    )
    flow = make_flow(body=body)
    await plugin.request(flow)
    return json.loads(flow.request.body)


MESSAGES = b'{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"empty":[],"obj":{}}'


async def test_index_zero_goes_first() -> None:
    script = """
function onRequest(ctx)
  local body = json.decode(octelium.req.getRequestBody())
  local before = #body.messages
  local seen = 0
  for _ in ipairs(body.messages) do seen = seen + 1 end
  body.messages[0] = {role = "system", content = "s"}
  octelium.req.setRequestHeader("x-len", tostring(before) .. "," .. tostring(#body.messages) .. "," .. seen)
  octelium.req.setRequestBody(json.encode(body))
end
"""
    flow = make_flow(body=MESSAGES)
    await lua(script).request(flow)
    out = json.loads(flow.request.body)
    assert [m["content"] for m in out["messages"]] == ["s", "a", "b"]
    assert flow.request.headers["x-len"] == "2,2,2"
    assert out["empty"] == [] and out["obj"] == {}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("{}", {}),
        ("json.array()", []),
        ("json.array({})", []),
        ("json.object({[1] = 'x'})", {"1": "x"}),
        ("{1, 2, 3}", [1, 2, 3]),
        ("{[0] = 'zero', 'one'}", ["zero", "one"]),
        ("{1, nil, 3}", [1, None, 3]),
        ("{1, 2, x = 3}", {"1": 1, "2": 2, "x": 3}),
        ("{a = 1.5, b = true, c = 'é'}", {"a": 1.5, "b": True, "c": "é"}),
        ("body.messages", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        ("body.empty", []),
        ("body.obj", {}),
    ],
)
async def test_encode_rules(expr: str, expected: object) -> None:
    assert await encode(expr, MESSAGES) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("json.array({1, 2, x = 3})", "non-integer keys"),
        ("(function() body.messages.extra = 1 return body.messages end)()", "non-integer keys"),
        ("{[1] = 1, [1000] = 2}", "too sparse"),
        ("{[-1] = 1}", "negative"),
        ("{f = print or tostring}", "cannot encode a function"),
        ("(function() local t = {} t.self = t return t end)()", "nested too deeply"),
        ("{s = '\\255'}", "not valid UTF-8"),
        ("{n = 0/0}", "NaN"),
    ],
)
async def test_encode_errors(expr: str, message: str) -> None:
    with pytest.raises(LuaScriptError, match=message):
        await encode(expr, MESSAGES)


async def test_strings_and_base64() -> None:
    script = """
function onRequest(ctx)
  local r = octelium.req
  assert(strings.lenUnicode("héllo") == 5 and #"héllo" == 6)
  assert(strings.lenUnicode("\\255\\254a") == 3)
  assert(strings.toLower("ÉCOLE") == "école" and strings.toUpper("straße") == "STRASSE")
  assert(strings.contains("a.b", ".") and not strings.contains("ab", "."))
  assert(strings.hasPrefix("gemini-2.5", "gemini") and strings.hasSuffix("x.json", ".json"))
  local parts = strings.split("a,b,,c", ",")
  assert(#parts == 4 and parts[3] == "" and json.encode(parts) == '["a","b","","c"]')
  assert(strings.trim("  hi \\n") == "hi" and strings.trim("xxhixx", "x") == "hi")
  assert(base64.decode(base64.encode("\\0bin")) == "\\0bin")
  assert(json.isSchemaValid('{"type":"object","required":["model"]}', '{"model":"m"}'))
  assert(not json.isSchemaValid({type = "object", required = json.array({"model"})}, '{}'))
  assert(ctx.user.metadata.name == "alice" and wardgate.ctx.user.spec.groups[1] == "dev")
  assert(r.getMethod() == "POST" and r.getPath() == "/v1/chat")
  assert(r.getQueryParam("a") == "1" and r.getQueryParam("none") == nil)
  r.setQueryParam("b", "x y")
  r.deleteQueryParam("a")
  r.setPath("/v2/chat")
  r.deleteRequestHeader("x-drop")
  assert(r.getRequestHeader("X-Keep") == "k")
  r.setResponseHeader("x-from-lua", "1")
end
"""
    plugin = lua(script)
    flow = make_flow(query="a=1", headers={"x-drop": "d", "x-keep": "k"})
    await plugin.request(flow)
    assert flow.request.query == "b=x%20y" and flow.request.path == "/v2/chat"
    assert "x-drop" not in flow.request.headers and flow.response is None
    flow.response = Response(200, CIMultiDict({"x-up": "1"}), None)
    plugin.response_headers(flow)
    assert flow.response.headers["x-from-lua"] == "1"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('octelium.req.setPath("/a/../b")', "'..'"),
        ('octelium.req.setPath("/a%2fb")', "encoded separator"),
        ('octelium.req.setRequestHeader("x", "a\\r\\nInjected: 1")', "CR, LF"),
        ('octelium.req.setRequestHeader("Content-Length", "1")', "managed by the gateway"),
        ('octelium.req.setRequestHeader("bad name", "1")', "invalid header name"),
        ("octelium.resp.getResponseBody()", "only available in onResponse"),
        ('local c = http.client(); c:setBaseURL("http://169.254.169.254")', "not in this plugin's allowedBaseURLs"),
        ("http.client():request()", "call setBaseURL first"),
    ],
)
async def test_api_misuse_fails_closed(call: str, message: str) -> None:
    with pytest.raises(LuaScriptError, match=message):
        await lua(f"function onRequest(ctx)\n  {call}\nend").request(make_flow())


async def test_exit_stops_the_script_and_answers() -> None:
    script = """
function onRequest(ctx)
  octelium.req.setResponseHeader("Content-Type", "text/plain")
  octelium.req.setResponseBody("nope")
  octelium.req.exit(418)
  octelium.req.setRequestHeader("x-after-exit", "ran")
end
"""
    plugin = lua(script)
    flow = make_flow()
    await plugin.request(flow)
    assert flow.response is not None and flow.response.status == 418 and flow.response.body == b"nope"
    assert "x-after-exit" not in flow.request.headers
    plugin.response_headers(flow)
    assert flow.response.headers["Content-Type"] == "text/plain"


async def test_on_response_sees_and_changes_the_buffered_response() -> None:
    script = """
function onResponse(ctx)
  local body = json.decode(wardgate.resp.getResponseBody())
  body.seen = wardgate.resp.getResponseCode()
  wardgate.resp.setResponseHeader("x-type", wardgate.resp.getResponseHeader("content-type"))
  wardgate.resp.setStatusCode(201)
  wardgate.resp.setResponseBody(json.encode(body))
end
"""
    plugin = lua(script)
    assert not hasattr(plugin, "request") and hasattr(plugin, "response")
    flow = make_flow()
    flow.response = Response(200, CIMultiDict({"Content-Type": "application/json"}), b'{"a":1}')
    await plugin.response(flow)
    assert json.loads(flow.response.body or b"") == {"a": 1, "seen": 200}
    assert flow.response.status == 201 and flow.response.headers["x-type"] == "application/json"


async def test_http_client_calls_an_allowed_service(aiohttp_server_url: str) -> None:
    script = """
function onRequest(ctx)
  local c = http.client()
  c:setBaseURL(BASE .. "/api")
  local resp, err = c:request():setHeader("x-key", "k"):setBody("ping"):post("/echo?x=1")
  assert(err == nil, err)
  octelium.req.setRequestHeader("x-code", tostring(resp:code()))
  octelium.req.setRequestBody(resp:body())
  local _, err2 = c:request():get("/slow")
  octelium.req.setRequestHeader("x-err", err2)
  if octelium.req.getPath() == "/escape" then
    pcall(function() return c:request():get("/../../admin") end)
  end
end
""".replace("BASE", repr(aiohttp_server_url))
    async with aiohttp.ClientSession() as session:
        plugin = lua(script, session, http={"allowedBaseURLs": [aiohttp_server_url + "/api"], "timeout": "300ms"})
        flow = make_flow()
        await plugin.request(flow)
        assert flow.request.headers["x-code"] == "201" and flow.request.body == b"POST /api/echo?x=1 k ping"
        assert "timed out" in flow.request.headers["x-err"]
        with pytest.raises(LuaScriptError, match="may not leave its base URL"):  # not catchable by pcall
            await plugin.request(make_flow(path="/escape"))


# The request body a call sets is kept in Lua until the call ends (one crossing fewer), so every way a call
# can end must hand it over, and reads in the call must see it.


async def test_a_body_set_is_read_back_in_the_same_call_and_applied_at_its_end() -> None:
    script = """
function onRequest(ctx)
  local before = wardgate.req.getRequestBody()
  wardgate.req.setRequestBody('{"a":1}')
  local after = wardgate.req.getRequestBody()
  wardgate.req.setRequestBody(after .. " ")
  wardgate.req.setRequestHeader("x-seen", before .. "|" .. after .. "|" .. wardgate.req.getRequestBody())
end
"""
    flow = make_flow(body=b"{}")
    await lua(script).request(flow)
    assert flow.request.body == b'{"a":1} '
    assert flow.request.headers["x-seen"] == '{}|{"a":1}|{"a":1} '


@pytest.mark.parametrize(
    "ending",
    [
        "",
        "wardgate.req.exit(418)",
        "error('boom')",
        "local ok = pcall(error, 'caught')",
        "wardgate.req.setRequestBody(5)",
    ],
)
async def test_a_body_set_is_applied_however_the_call_ends(ending: str) -> None:
    """As when each set crossed to Python at once: a later error fails the request, but the set happened."""
    script = f"function onRequest(ctx)\n  wardgate.req.setRequestBody('new')\n  {ending}\nend"
    flow = make_flow(body=b"old")
    try:
        await lua(script).request(flow)
    except LuaScriptError as exc:
        assert "boom" in str(exc) or "must be a string" in str(exc)
    assert flow.request.body == b"new"


async def test_a_body_set_does_not_reach_the_next_call() -> None:
    plugin = lua(
        "function onRequest(ctx)\n  local body = wardgate.req.getRequestBody()\n"
        "  if body == 'one' or body == 'boom' then wardgate.req.setRequestBody('set') end\n"
        "  if body == 'boom' then error('boom') end\n"
        "  wardgate.req.setRequestHeader('x-body', wardgate.req.getRequestBody())\nend"
    )
    flows = {name: make_flow(body=name.encode()) for name in ("one", "two", "boom", "three")}
    for name, flow in flows.items():
        if name == "boom":
            with pytest.raises(LuaScriptError, match="boom"):
                await plugin.request(flow)
        else:
            await plugin.request(flow)
    assert plugin.pool.stats == (1, 1)  # one runtime served the calls before the failure and one after
    assert [f.request.body for f in flows.values()] == [b"set", b"two", b"set", b"three"]
    assert [f.request.headers.get("x-body") for f in flows.values()] == ["set", "two", None, "three"]


@pytest.mark.parametrize(
    ("call", "message"),
    [("wardgate.req.setRequestBody({})", "the body must be a string"), ("wardgate.req.setRequestBody()", "string")],
)
async def test_set_request_body_refuses_what_is_not_a_string(call: str, message: str) -> None:
    script = f"function onRequest(ctx)\n  local ok, e = pcall(function() {call} end)\n"
    script += "  wardgate.req.setRequestHeader('x-e', tostring(e))\nend"
    flow = make_flow(body=b"old")
    await lua(script).request(flow)
    assert message in flow.request.headers["x-e"] and flow.request.body == b"old"


async def test_set_request_body_is_refused_outside_on_request() -> None:
    script = (
        "function onResponse(ctx)\n  local ok, e = pcall(wardgate.req.setRequestBody, 'x')\n"
        "  wardgate.resp.setResponseHeader('x-e', tostring(e))\nend"
    )
    flow = make_flow(body=b"old")
    flow.response = Response(200, CIMultiDict(), b"{}")
    await lua(script).response(flow)
    assert flow.response.headers["x-e"] == "only available in onRequest" and flow.request.body == b"old"
    with pytest.raises(LuaScriptError, match="only available in onRequest"):
        lua("wardgate.req.setRequestBody('x')\nfunction onRequest(ctx) end")
