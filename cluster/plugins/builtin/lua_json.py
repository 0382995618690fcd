"""JSON for Lua scripts, in Lua: `json.decode`/`json.encode` and the lazy documents behind `ctx`.

The codec runs inside the script's coroutine, so decoding a body is ordinary Lua work: the count hook
bounds its time and an allocation over `maxMemory` is a plain Lua error. (Building tables from Python
instead ran outside Lua's error handling: lupa's conversion hit the memory cap with the GIL held, the
error unwound past it, and the process deadlocked.) Python hands Lua only strings, checked against
the memory left before they cross.

A lazy document is a read-only proxy for a Python container: the first touch asks Python for that one
level (`fetch(handle)` -> JSON `[values, refs]`, containers replaced by refs `{key: [handle, kind]}`,
kind 1 array, 2 object, 3 a raw byte string fetched by `fetch_raw`). Touching `ctx.user.metadata`
converts three small levels, never the parsed request body next to them.
"""

from __future__ import annotations

JSON_LUA = rb"""
local byte, find, sub, format, gsub, char, match = string.byte, string.find, string.sub, string.format,
  string.gsub, string.char, string.match
local concat, utf8char, utf8len, mathtype = table.concat, utf8.char, utf8.len, math.type
local tonumber, tostring, type, error, next = tonumber, tostring, type, error, next
local setmetatable, rawmeta = setmetatable, debug.getmetatable
local huge = math.huge
local MAX_DEPTH = 128

local ARRAY = {__name = "json.array"}
local OBJECT = {__name = "json.object"}
local LAZY = {}

local function fail(i, what) error(format("json.decode: %s at byte %d", what, i), 0) end

local escapes = {[34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r",
                 [116] = "\t"}
local SPECIAL = '["\\\0-\31]'

local function skip(s, i)
  local b = byte(s, i)
  if b == 32 or b == 10 or b == 13 or b == 9 then
    local _, e = find(s, "^[ \n\r\t]*", i)
    return e + 1
  end
  return i
end

local function hex4(s, i)
  local h = sub(s, i, i + 3)
  if not find(h, "^%x%x%x%x$") then fail(i, "invalid \\u escape") end
  return tonumber(h, 16)
end

-- Anchored runs of one class are the matcher's fast loop; an unanchored set search is ~3x slower.
local PLAIN_STRING = '^[^"\\\0-\31]*"'

local function dstring(s, i)
  local _, e = find(s, PLAIN_STRING, i + 1)
  if e then return sub(s, i + 1, e - 1), e + 1 end
  local j = find(s, SPECIAL, i + 1)
  if j == nil then fail(i, "unterminated string") end
  local parts, n, k = {}, 0, i + 1
  while true do
    local c = byte(s, j)
    n = n + 1
    parts[n] = sub(s, k, j - 1)
    if c == 34 then return concat(parts, "", 1, n), j + 1 end
    if c ~= 92 then fail(j, "control character in string") end
    local e = byte(s, j + 1)
    if e == 117 then
      local cp = hex4(s, j + 2)
      k = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        if sub(s, k, k + 1) ~= "\\u" then fail(j, "lone surrogate") end
        local lo = hex4(s, k + 2)
        if lo < 0xDC00 or lo > 0xDFFF then fail(j, "lone surrogate") end
        cp, k = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00), k + 6
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        fail(j, "lone surrogate")
      end
      n = n + 1
      parts[n] = utf8char(cp)
    else
      local r = escapes[e]
      if r == nil then fail(j, "invalid escape") end
      n = n + 1
      parts[n] = r
      k = j + 2
    end
    j = find(s, SPECIAL, k)
    if j == nil then fail(k, "unterminated string") end
  end
end

local function dnumber(s, i)
  local _, e = find(s, "^-?%d+", i)
  if e == nil then fail(i, "unexpected character") end
  local first = byte(s, i) == 45 and i + 1 or i
  if byte(s, first) == 48 and e > first then fail(i, "leading zero") end
  local c = byte(s, e + 1)
  if c == 46 then
    local _, f = find(s, "^%d+", e + 2)
    if f == nil then fail(e + 1, "digit expected") end
    e, c = f, byte(s, f + 1)
  end
  if c == 101 or c == 69 then
    local _, f = find(s, "^[-+]?%d+", e + 2)
    if f == nil then fail(e + 1, "digit expected") end
    e = f
  end
  return tonumber(sub(s, i, e)), e + 1
end

local dvalue

-- Fast paths: one match reads a plain key and its colon, another a plain string value and the delimiter
-- after it (each a C call where the general path makes five or six). Whatever they do not match (escapes,
-- numbers, nested values, every malformed case) goes the general way, which reports the errors.
local MEMBER = '^[ \n\r\t]*"([^"\\\0-\31]*)"[ \n\r\t]*:[ \n\r\t]*()'
local IN_OBJECT = '^"([^"\\\0-\31]*)"[ \n\r\t]*([,}])()'
local IN_ARRAY = '^[ \n\r\t]*"([^"\\\0-\31]*)"[ \n\r\t]*([,%]])()'

local function dobject(s, i, depth)
  local t = {}
  i = skip(s, i + 1)
  if byte(s, i) == 125 then return t, i + 1 end
  while true do
    local k, at = match(s, MEMBER, i)
    local v, d, after
    if k ~= nil then
      v, d, after = match(s, IN_OBJECT, at)
    else
      i = skip(s, i)
      if byte(s, i) ~= 34 then fail(i, "object key expected") end
      k, i = dstring(s, i)
      i = skip(s, i)
      if byte(s, i) ~= 58 then fail(i, "':' expected") end
      at = i + 1
    end
    if v ~= nil then
      t[k] = v
      if d == "}" then return t, after end
      i = after
    else
      v, i = dvalue(s, at, depth)
      t[k] = v
      i = skip(s, i)
      local c = byte(s, i)
      if c == 125 then return t, i + 1 end
      if c ~= 44 then fail(i, "',' or '}' expected") end
      i = i + 1
    end
  end
end

local function darray(s, i, depth)
  local t, n = setmetatable({}, ARRAY), 0
  i = skip(s, i + 1)
  if byte(s, i) == 93 then return t, i + 1 end
  while true do
    local v, d, after = match(s, IN_ARRAY, i)
    n = n + 1
    if v ~= nil then
      t[n] = v
      if d == "]" then return t, after end
      i = after
    else
      v, i = dvalue(s, i, depth)
      t[n] = v
      i = skip(s, i)
      local c = byte(s, i)
      if c == 93 then return t, i + 1 end
      if c ~= 44 then fail(i, "',' or ']' expected") end
      i = i + 1
    end
  end
end

dvalue = function(s, i, depth)
  i = skip(s, i)
  local c = byte(s, i)
  if c == 34 then return dstring(s, i) end
  if c == 123 or c == 91 then
    if depth >= MAX_DEPTH then fail(i, "value nested too deeply") end
    if c == 123 then return dobject(s, i, depth + 1) end
    return darray(s, i, depth + 1)
  end
  if c == 116 and sub(s, i, i + 3) == "true" then return true, i + 4 end
  if c == 102 and sub(s, i, i + 4) == "false" then return false, i + 5 end
  if c == 110 and sub(s, i, i + 3) == "null" then return nil, i + 4 end
  if c == nil then fail(i, "unexpected end of input") end
  return dnumber(s, i)
end

local function decode(s)
  if type(s) ~= "string" then error("json.decode's argument must be a string, got " .. type(s), 2) end
  if not utf8len(s) then fail(1, "invalid UTF-8") end
  local v, i = dvalue(s, 1, 0)
  i = skip(s, i)
  if i <= #s then fail(i, "trailing data") end
  return v
end

-- Lazy documents -------------------------------------------------------------------------------------

local states = setmetatable({}, {__mode = "k"})

local function lazy(fetch, fetch_raw, handle, kind)
  local p = setmetatable({}, LAZY)
  states[p] = {fetch = fetch, fetch_raw = fetch_raw, handle = handle, kind = kind}
  return p
end

local function materialize(p)
  local st = states[p]
  local real = st.real
  if real == nil then
    local doc = decode(st.fetch(st.handle))
    real = doc[1]
    for k, ref in next, doc[2] do
      local key = k
      if st.kind == 1 then key = tonumber(k) + 1 end
      if ref[2] == 3 then
        real[key] = st.fetch_raw(ref[1])
      else
        real[key] = lazy(st.fetch, st.fetch_raw, ref[1], ref[2])
      end
    end
    st.real = real
  end
  return real, st.kind
end

LAZY.__index = function(p, k) return (materialize(p))[k] end
LAZY.__newindex = function() error("ctx is read-only", 2) end
LAZY.__pairs = function(p) return next, (materialize(p)), nil end
LAZY.__len = function(p) return #(materialize(p)) end
LAZY.__metatable = false

-- Encoding ------------------------------------------------------------------------------------------

local quoted = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
                ["\t"] = "\\t"}
for c = 0, 31 do
  local ch = char(c)
  if quoted[ch] == nil then quoted[ch] = format("\\u%04x", c) end
end
local QUOTE = '[\0-\31"\\]'
local NO_QUOTE = '^[^\0-\31"\\]*$'

local function estring(s, buf, n)
  if not utf8len(s) then error("json.encode: a string is not valid UTF-8", 0) end
  if not find(s, NO_QUOTE) then s = gsub(s, QUOTE, quoted) end
  buf[n + 1], buf[n + 2], buf[n + 3] = '"', s, '"'
  return n + 3
end

-- '"key":' for keys seen before (bounded: keys of an attacker's document are not all kept).
local keys, nkeys = {}, 0

local function ekey(k, buf, n, first)
  local piece = keys[k]
  if piece == nil then
    if not utf8len(k) then error("json.encode: a string is not valid UTF-8", 0) end
    piece = find(k, NO_QUOTE) and k or gsub(k, QUOTE, quoted)
    piece = '"' .. piece .. '":'
    if nkeys < 4096 then
      keys[k], nkeys = piece, nkeys + 1
    end
  end
  if first then
    buf[n + 1] = piece
    return n + 1
  end
  buf[n + 1], buf[n + 2] = ",", piece
  return n + 2
end

local function enumber(v)
  if mathtype(v) == "integer" then return tostring(v) end
  if v ~= v or v == huge or v == -huge then error("json.encode: NaN and infinity have no JSON form", 0) end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  if not find(s, "[.eEn]") then s = s .. ".0" end
  return s
end

local evalue

local function eobject(t, buf, n, depth)
  n = n + 1
  buf[n] = "{"
  local first = true
  for k, v in next, t do
    local tk = type(k)
    if tk == "number" then
      k, tk = tostring(k), "string"
    elseif tk ~= "string" then
      error("json.encode: a " .. tk .. " cannot be an object key", 0)
    end
    n = ekey(k, buf, n, first)
    first = false
    n = evalue(v, buf, n, depth)
  end
  n = n + 1
  buf[n] = "}"
  return n
end

local function earray(t, buf, n, depth, count, low, high)
  if low < 0 then error("json.encode: negative array index", 0) end
  if high > 2 * count + 16 then
    error("json.encode: array too sparse (holes become null only up to 2x its size)", 0)
  end
  n = n + 1
  buf[n] = "["
  local start = low == 0 and 0 or 1
  for i = start, high do
    if i ~= start then
      n = n + 1
      buf[n] = ","
    end
    n = evalue(t[i], buf, n, depth)
  end
  n = n + 1
  buf[n] = "]"
  return n
end

evalue = function(v, buf, n, depth)
  local tv = type(v)
  if tv == "string" then
    return estring(v, buf, n)
  elseif tv == "number" then
    n = n + 1
    buf[n] = enumber(v)
    return n
  elseif tv == "boolean" then
    n = n + 1
    buf[n] = v and "true" or "false"
    return n
  elseif tv == "nil" then
    n = n + 1
    buf[n] = "null"
    return n
  elseif tv ~= "table" then
    error("json.encode: cannot encode a " .. tv, 0)
  end
  if depth >= MAX_DEPTH then error("json.encode: nested too deeply (or a cycle)", 0) end
  local mt, mark = rawmeta(v), 0
  if mt == ARRAY then
    mark = 1
  elseif mt == OBJECT then
    mark = 2
  elseif mt == LAZY then
    v, mark = materialize(v)
  end
  if mark == 2 then return eobject(v, buf, n, depth + 1) end
  local count, low, high, ints = 0, nil, nil, true
  for k in next, v do
    count = count + 1
    if mathtype(k) == "integer" then
      if low == nil or k < low then low = k end
      if high == nil or k > high then high = k end
    else
      ints = false
      if mark == 0 then break end -- an object: its keys are walked once, by eobject
    end
  end
  if count == 0 then
    n = n + 1
    buf[n] = mark == 1 and "[]" or "{}"
    return n
  end
  if not ints then
    if mark == 1 then error("json.encode: an array (json.array or decoded) has non-integer keys", 0) end
    return eobject(v, buf, n, depth + 1)
  end
  return earray(v, buf, n, depth + 1, count, low, high)
end

local function encode(v)
  local buf = {}
  local n = evalue(v, buf, 0, 0)
  return concat(buf, "", 1, n)
end

return {decode = decode, encode = encode, lazy = lazy, ARRAY = ARRAY, OBJECT = OBJECT}
"""
