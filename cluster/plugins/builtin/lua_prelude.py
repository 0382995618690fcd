"""The privileged Lua prelude: run once per runtime, it builds the sandbox the scripts run in.

It runs with the full standard library, captures what the driver needs (debug.sethook, coroutines,
load in text mode), loads the JSON codec (lua_json) and the library guards (lua_limits), builds the
script environment from safe copies and the Wardgate API, then drops the dangerous globals. Scripts
only ever see `env`; nothing here is reachable from it except through the closures deliberately put
there.

The count hook runs every HOOK_EVERY instructions while the heap is small and more often as it grows
(down to every MIN_EVERY at BASE_KB * HOOK_EVERY / MIN_EVERY KiB): one instruction on strings of
megabytes (`..`, `==`, `<`) costs milliseconds, so the interval shrinks in proportion. Python never
receives a Lua table from this module (converting one allocates in Lua outside any error handler):
HTTP headers cross as one string of NUL-separated names and values.
"""

from __future__ import annotations

PRELUDE = rb"""
local P = ...
local sethook, rawmeta = debug.sethook, debug.getmetatable
local cocreate, coresume, costatus, coyield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local load, type, error, select, setmetatable, getmetatable = load, type, error, select, setmetatable, getmetatable
local pcall, xpcall, rawget, rawequal, pairs, next, tostring = pcall, xpcall, rawget, rawequal, pairs, next, tostring
local strfind, strsub, utf8len, utf8offset, concat = string.find, string.sub, utf8.len, utf8.offset, table.concat
local gcount, floor = collectgarbage, math.floor

local HTTP, EXIT = {}, {}
local HOOK_EVERY, MIN_EVERY, BASE_KB, QUANTUM = P.hook_every, P.min_every, P.base_kb, P.quantum
local exhausted = false
local every, work = HOOK_EVERY, 0
local current_co

local hook

local function adapt()
  local kb = gcount("count")
  local want = HOOK_EVERY
  if kb > BASE_KB then
    want = floor(HOOK_EVERY * BASE_KB / kb)
    if want < MIN_EVERY then want = MIN_EVERY end
  end
  if want ~= every then
    every = want
    sethook(current_co, hook, "", every)
  end
end

hook = function()
  if not P.tick(every) then
    exhausted = true
    error("bound exceeded", 0)
  end
  adapt()
end

-- Work done inside a C call (a pattern match, a chunk of table.move) brings the time check forward.
local function spend(units)
  work = work + units
  if work >= QUANTUM then
    work = 0
    if not P.tick(0) then
      exhausted = true
      error("bound exceeded", 0)
    end
    adapt()
  end
end

local J = load(P.json_src, "=json", "t")()
local ARRAY, OBJECT = J.ARRAY, J.OBJECT
local L = load(P.limits_src, "=limits", "t")({spend = spend, find_plain = P.find_plain, step_limit = P.step_limit})
local LINEAR = {"byte", "format", "len", "lower", "reverse", "sub", "upper"}

local function readonly(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error(name .. " is read-only", 2) end,
    __metatable = false,
  })
end

local function copy(t, skip)
  local out = {}
  for k, v in pairs(t) do
    if not (skip and skip[k]) then out[k] = v end
  end
  return out
end

local function rethrow(ok, ...)
  if not ok then
    local err = ...
    if exhausted or err == "not enough memory" or P.exhausted() then error(err, 0) end
  end
  return ok, ...
end

local function checkstr(v, what)
  if type(v) ~= "string" then error(what .. " must be a string, got " .. type(v), 3) end
  return v
end

-- strings: the byte-level helpers stay in Lua, Unicode-aware ones go to Python.
local function split(s, sep)
  checkstr(s, "s")
  checkstr(sep, "sep")
  local parts, n, pos = setmetatable({}, ARRAY), 0, 1
  if sep == "" then
    while pos <= #s do
      local stop = pos
      if utf8len(s, pos, pos) == 1 then stop = utf8offset(s, 2, pos) - 1 end
      n = n + 1
      parts[n] = strsub(s, pos, stop)
      pos = stop + 1
    end
    return parts
  end
  while true do
    local a, b = L.find(s, sep, pos, true)
    n = n + 1
    if a == nil then
      parts[n] = strsub(s, pos)
      return parts
    end
    parts[n] = strsub(s, pos, a - 1)
    pos = b + 1
  end
end

local strings = {
  contains = function(s, sub) return L.contains(checkstr(s, "s"), checkstr(sub, "substr")) end,
  hasPrefix = function(s, p) checkstr(s, "s"); checkstr(p, "prefix"); return strsub(s, 1, #p) == p end,
  hasSuffix = function(s, p) checkstr(s, "s"); checkstr(p, "suffix"); return p == "" or strsub(s, -#p) == p end,
  lenUnicode = function(s)
    checkstr(s, "s")
    local n = utf8len(s)
    if n then return n end
    return P.strings_len(s)
  end,
  toLower = P.strings_lower,
  toUpper = P.strings_upper,
  split = split,
  trim = P.strings_trim,
}

local json = {
  decode = J.decode,
  encode = J.encode,
  isSchemaValid = function(schema, doc)
    if type(schema) == "table" then schema = J.encode(schema) end
    return P.json_schema_valid(schema, doc)
  end,
  array = function(t)
    t = t or {}
    if type(t) ~= "table" or (rawmeta(t) ~= nil and rawmeta(t) ~= ARRAY) then
      error("json.array needs a table without a metatable", 2)
    end
    return setmetatable(t, ARRAY)
  end,
  object = function(t)
    t = t or {}
    if type(t) ~= "table" or (rawmeta(t) ~= nil and rawmeta(t) ~= OBJECT) then
      error("json.object needs a table without a metatable", 2)
    end
    return setmetatable(t, OBJECT)
  end,
}

local base64 = {encode = P.base64_encode, decode = P.base64_decode}

-- http.client(): the base URL is checked against the allow-list when set; calls yield to the driver.
local Response = {}
Response.__index = Response
Response.__metatable = false
function Response:code() return rawget(self, "_code") end
function Response:body() return rawget(self, "_body") end
function Response:header(k) return rawget(self, "_headers")[P.lower_ascii(checkstr(k, "header name"))] end

local Request = {}
Request.__index = Request
Request.__metatable = false
function Request:setBody(s) self._body = checkstr(s, "body"); return self end
function Request:setHeader(k, v)
  self._headers[checkstr(k, "header name")] = checkstr(v, "header value")
  return self
end
local function call(r, method, path)
  checkstr(path, "path")
  local flat, n = {}, 0
  for k, v in pairs(r._headers) do
    if strfind(k, "\0", 1, true) or strfind(v, "\0", 1, true) then error("http client: a header has a NUL", 3) end
    flat[n + 1], flat[n + 2], n = k, v, n + 2
  end
  flat[n + 1] = ""
  local code, body, raw = coyield(HTTP, r._base, method, path, concat(flat, "\0", 1, n + 1), r._body)
  if code == nil then return nil, body end
  local headers, pos = {}, 1
  while pos <= #raw do
    local a = strfind(raw, "\0", pos, true)
    local b = strfind(raw, "\0", a + 1, true)
    headers[strsub(raw, pos, a - 1)] = strsub(raw, a + 1, b - 1)
    pos = b + 1
  end
  return setmetatable({_code = code, _body = body, _headers = headers}, Response), nil
end
function Request:get(path) return call(self, "GET", path) end
function Request:post(path) return call(self, "POST", path) end
function Request:put(path) return call(self, "PUT", path) end
function Request:patch(path) return call(self, "PATCH", path) end
function Request:delete(path) return call(self, "DELETE", path) end

local Client = {}
Client.__index = Client
Client.__metatable = false
function Client:setBaseURL(u) self._base = P.http_base(checkstr(u, "base URL")); return self end
function Client:request()
  if self._base == nil then error("http client: call setBaseURL first", 2) end
  return setmetatable({_base = self._base, _headers = {}, _body = nil}, Request)
end
local http = {client = function() return setmetatable({}, Client) end}

local req = copy(P.req)
req.exit = function(status)
  P.exit(status)
  coyield(EXIT)
end
-- The request body a call sets stays here and goes back to Python with the call's end (no crossing per set):
-- Python applies it whatever the outcome, as it would have applied it at the set.
local in_request, pending_body = false, nil
local get_body = P.req.getRequestBody
req.setRequestBody = function(body)
  if not in_request then error("only available in onRequest", 0) end
  if type(body) ~= "string" then error("the body must be a string", 0) end
  pending_body = body
end
req.getRequestBody = function()
  if pending_body ~= nil then return pending_body end
  return get_body()
end
local api = {req = readonly(req, "req"), resp = readonly(P.resp, "resp")}
local current_ctx
local wardgate = setmetatable({}, {
  __index = function(_, k)
    if k == "ctx" then return current_ctx end
    return api[k]
  end,
  __newindex = function() error("wardgate is read-only", 2) end,
  __metatable = false,
})

local function new_ctx() return J.lazy(P.ctx_node, P.ctx_raw, 0, 2) end

local string_lib = copy(string, {dump = true})
string_lib.find, string_lib.match, string_lib.gmatch, string_lib.gsub = L.find, L.match, L.gmatch, L.gsub
string_lib.rep = L.rep
for _, name in ipairs(LINEAR) do string_lib[name] = L.sized(string[name]) end
local table_lib = copy(table)
table_lib.move, table_lib.sort, table_lib.concat = L.move, L.sort, L.sized_concat
local utf8_lib = copy(utf8)
for _, name in ipairs({"len", "codepoint", "offset"}) do utf8_lib[name] = L.sized(utf8[name]) end
local safe_string = readonly(string_lib, "string")
local smeta = rawmeta("")
smeta.__index = safe_string
smeta.__metatable = false

local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
  tonumber = L.sized(tonumber), tostring = tostring, type = type, rawequal = rawequal, rawlen = rawlen, rawget = rawget,
  getmetatable = getmetatable,
  setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then error("__gc metamethods are not allowed", 2) end
    return setmetatable(t, mt)
  end,
  pcall = function(f, ...) return rethrow(pcall(f, ...)) end,
  -- A bound error is raised inside the count hook, where Lua runs hooks off: a message handler
  -- called there could loop unbounded, so it is skipped once a bound is exceeded.
  xpcall = function(f, h, ...)
    return rethrow(xpcall(f, function(e)
      if exhausted then return e end
      return h(e)
    end, ...))
  end,
  unpack = table.unpack,
  _VERSION = _VERSION,
  string = safe_string,
  table = readonly(table_lib, "table"),
  math = readonly(copy(math), "math"),
  utf8 = readonly(utf8_lib, "utf8"),
  json = readonly(json, "json"),
  strings = readonly(strings, "strings"),
  base64 = readonly(base64, "base64"),
  http = readonly(http, "http"),
  wardgate = wardgate,
  octelium = wardgate,
}
env._G = env

for _, name in ipairs({"debug", "io", "os", "package", "require", "load", "loadfile", "dofile", "loadstring",
                       "collectgarbage", "python", "coroutine", "print"}) do
  _G[name] = nil
end

local R = {}

local function finish(co, ok, ...)
  if not ok then
    local err = ...
    local t = type(err)
    if t == "userdata" then
      err = tostring(err)
    elseif t == "number" then
      err = tostring(err)
    elseif t ~= "string" then
      err = "(error object is a " .. t .. " value)"
    end
    return "error", err
  end
  if costatus(co) == "dead" then return "done" end
  local tag = ...
  if rawequal(tag, EXIT) then return "exit" end
  if rawequal(tag, HTTP) then return "http", select(2, ...) end
  return "error", "the script yielded outside an API call"
end

-- One call at a time per runtime: the running coroutine stays here (lupa cannot hand threads out) while it
-- waits for an HTTP answer; a call that ended lets go of it at once. Every crossing from Python costs (the
-- GIL, lupa's conversions, cold caches in a busy gateway), so a call that makes no HTTP request is one
-- crossing: `run` starts it and takes its first step.

local function over(kind, ...)
  if kind == "http" then return kind, ... end
  current_co, current_ctx, in_request = nil, nil, false
  local body = pending_body
  pending_body = nil
  return kind, (...), body
end

function R.run(fn, with_ctx, request)
  exhausted, every, work = false, HOOK_EVERY, 0
  in_request, pending_body = request, nil
  current_co = cocreate(fn)
  sethook(current_co, hook, "", HOOK_EVERY)
  current_ctx = with_ctx and new_ctx() or nil
  return over(finish(current_co, coresume(current_co, current_ctx)))
end

function R.step(...)
  return over(finish(current_co, coresume(current_co, ...)))
end

function R.stop()
  current_co, current_ctx, in_request, pending_body = nil, nil, false, nil
end

function R.collect() gcount("collect") end

function R.compile(source, chunkname)
  local chunk, err = load(source, "=" .. chunkname, "t", env)
  if chunk == nil then return nil, err end
  return chunk
end

function R.entry(name)
  local fn = rawget(env, name)
  if fn ~= nil and type(fn) ~= "function" then return nil, name .. " is not a function" end
  return fn
end

function R.freeze()
  setmetatable(env, {
    __newindex = function(_, k)
      error("assignment to undeclared global '" .. tostring(k) .. "' (declare it local)", 2)
    end,
    __metatable = false,
  })
end

return R
"""
