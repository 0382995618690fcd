"""The privileged Lua prelude: run once per runtime, it builds the sandbox the scripts run in.

It runs with the full standard library, captures what the driver needs (debug.sethook, coroutines,
load in text mode), builds the script environment from safe copies and the Wardgate API, then drops
the dangerous globals. Scripts only ever see `env`; nothing here is reachable from it except through
the closures deliberately put there.
"""

from __future__ import annotations

PRELUDE = rb"""
local P = ...
local sethook, rawmeta = debug.sethook, debug.getmetatable
local cocreate, coresume, costatus, coyield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local load, type, error, select, setmetatable, getmetatable = load, type, error, select, setmetatable, getmetatable
local pcall, xpcall, rawget, rawequal, pairs, next, tostring = pcall, xpcall, rawget, rawequal, pairs, next, tostring
local strfind, strsub, utf8len = string.find, string.sub, utf8.len

local HTTP, EXIT = {}, {}
local ARRAY = {__name = "json.array"}
local OBJECT = {__name = "json.object"}
local HOOK_EVERY = P.hook_every
local exhausted = false

local function hook()
  if not P.tick() then
    exhausted = true
    error("bound exceeded", 0)
  end
end

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
local strings = {
  contains = function(s, sub) return strfind(checkstr(s, "s"), checkstr(sub, "substr"), 1, true) ~= nil end,
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
  split = P.strings_split,
  trim = P.strings_trim,
}

local json = {
  decode = P.json_decode,
  encode = P.json_encode,
  isSchemaValid = P.json_schema_valid,
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
  local code, body, headers = coyield(HTTP, r._base, method, path, r._headers, r._body)
  if code == nil then return nil, body end
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

local function new_ctx()
  local real
  local function get()
    if real == nil then real = P.ctx() end
    return real
  end
  return setmetatable({}, {
    __index = function(_, k) return get()[k] end,
    __newindex = function() error("ctx is read-only", 2) end,
    __pairs = function() return next, get(), nil end,
    __len = function() return 0 end,
    __metatable = false,
  })
end

local safe_string = readonly(copy(string, {dump = true}), "string")
local smeta = rawmeta("")
smeta.__index = safe_string
smeta.__metatable = false

local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
  tonumber = tonumber, tostring = tostring, type = type, rawequal = rawequal, rawlen = rawlen, rawget = rawget,
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
  table = readonly(copy(table), "table"),
  math = readonly(copy(math), "math"),
  utf8 = readonly(copy(utf8), "utf8"),
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

-- One call at a time per runtime: the running coroutine stays here (lupa cannot hand threads out).
local current_co

function R.start(fn, with_ctx)
  exhausted = false
  current_co = cocreate(fn)
  sethook(current_co, hook, "", HOOK_EVERY)
  current_ctx = with_ctx and new_ctx() or nil
  return current_ctx
end

function R.step(...)
  return finish(current_co, coresume(current_co, ...))
end

function R.stop()
  current_co, current_ctx = nil, nil
end

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

function R.kind(t)
  local mt = rawmeta(t)
  if mt == ARRAY then return 1 end
  if mt == OBJECT then return 2 end
  return 0
end

function R.array(t) return setmetatable(t, ARRAY) end

return R
"""
