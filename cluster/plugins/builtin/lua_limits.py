"""Bounds inside Lua library calls: the count hook only runs between VM instructions, never inside C.

Three kinds of C call can run long on their own, and each gets its own guard here:

- **Pattern matching** (`find`/`match`/`gmatch`/`gsub`) backtracks: `(.-)x(.-)y(.-)z` on 260 bytes
  ran 1.7 s. Before a call the pattern is scanned into items and an upper bound on the matcher's
  steps is computed (each repetition multiplies by one more than the longest run of the subject its
  class can match; an unanchored search multiplies by the start positions, or by the occurrences
  of a leading literal). Over `STEP_LIMIT` the call is refused; under it the bound is spent against
  the time check (`spend`).
- **Plain search** (`find(s, p, 1, true)`, `strings.contains`, a pattern without specials) compares
  up to #s * #p bytes; a costly one goes to Python's linear-time `bytes.find`.
- **Loops in C that do not depend on memory**: `string.rep("", 1e15)` loops without allocating,
  `table.move` walks any index range, and `table.sort` makes n log n comparisons in C. The first
  returns at once, the others run in chunks or with a Lua comparator, so the count hook sees them.

Everything else in the library is linear in the size of its operands, which `maxMemory` bounds; the
count hook runs more often as the heap grows (lua_prelude), which covers those and the big-operand
VM instructions (`..`, `==`, `<` on strings of megabytes).

On the Python side, GcClock tells a step's own CPU time from the collector's (the inline budget, lua.py).
"""

from __future__ import annotations

import gc
import threading
import time

STEP_LIMIT = 4_000_000
"""Most matcher steps a single pattern call may need in the worst case (about 20-40 ms of C)."""

LIMITS_LUA = rb"""
local D = ...
local spend, find_plain = D.spend, D.find_plain
local strfind, strmatch, strgmatch, strgsub, strrep, strsub, byte = string.find, string.match, string.gmatch,
  string.gsub, string.rep, string.sub, string.byte
local tmove, tsort, tconcat, type, error, rawequal = table.move, table.sort, table.concat, type, error, rawequal
local mathtype, tointeger, huge = math.type, math.tointeger, math.huge

local STEP_LIMIT = D.step_limit
local PLAIN_LIMIT = 64 * 1024 * 1024
local SCAN_ITERS = 4096
local MOVE_CHUNK = 65536
local SPECIALS = "[%^%$%*%+%?%.%(%)%[%]%%%-]"

-- The index after the single-character class starting at p[i] (mirrors lstrlib's classEnd).
local function class_end(p, i, m)
  local c = byte(p, i)
  if c == 37 then return i + 2 end
  if c ~= 91 then return i + 1 end
  local j = i + 1
  if byte(p, j) == 94 then j = j + 1 end
  repeat
    if j > m then return m + 1 end
    local cj = byte(p, j)
    j = j + 1
    if cj == 37 then j = j + 1 end
  until byte(p, j) == 93
  return j + 1
end

-- How many times a class can repeat at one position: the longest run of the subject it matches.
local function longest_run(s, cls, n)
  if cls == "." then return n end
  local best, pos = 0, 1
  for _ = 1, SCAN_ITERS do
    local a, b = strfind(s, cls .. "+", pos)
    if a == nil then return best end
    if b - a + 1 > best then best = b - a + 1 end
    pos = b + 1
  end
  return n
end

local function occurrences(s, cls, n)
  local count, pos = 0, 1
  for _ = 1, SCAN_ITERS do
    local a = strfind(s, cls, pos)
    if a == nil then return count end
    count, pos = count + 1, a + 1
  end
  return n + 1
end

-- An upper bound on the steps lstrlib's matcher takes for pattern p on subject s.
local function bound(s, p, may_anchor)
  local n, m = #s, #p
  local i, anchored = 1, false
  if may_anchor and byte(p, 1) == 94 then i, anchored = 2, true end
  local mult, add, lit = {}, {}, {}
  local k = 0
  while i <= m do
    local c, d = byte(p, i), byte(p, i + 1)
    k = k + 1
    mult[k], add[k] = 1, 1
    if c == 40 or c == 41 or (c == 36 and i == m) then
      i = i + 1
    elseif c == 37 and d == 98 then
      add[k], i = n + 1, i + 4
    elseif c == 37 and d == 102 then
      i = class_end(p, i + 2, m)
    elseif c == 37 and d ~= nil and d >= 48 and d <= 57 then
      add[k], i = n + 1, i + 2
    else
      local e = class_end(p, i, m)
      local q = byte(p, e)
      add[k] = e - i
      if q == 42 or q == 43 or q == 45 then
        mult[k] = longest_run(s, strsub(p, i, e - 1), n) + 1
        e = e + 1
      elseif q == 63 then
        mult[k] = 2
        e = e + 1
      elseif e - i == 1 and c ~= 46 or (c == 37 and not strfind(strsub(p, i + 1, i + 1), "%w")) then
        lit[k] = strsub(p, i, e - 1)
      end
      i = e
    end
  end
  local cost = 1
  for j = k, 2, -1 do
    cost = mult[j] * (add[j] + cost)
    if cost > STEP_LIMIT then return huge end
  end
  if k >= 1 then
    if anchored then return mult[1] * (add[1] + cost) end
    if lit[1] then return n + 1 + occurrences(s, lit[1], n) * cost end
    cost = mult[1] * (add[1] + cost)
  end
  return (n + 1) * cost
end

local function costly(name, s, p)
  error(("string.%s: this pattern could take over %d steps on a %d-byte subject; " ..
         "use a plain find, strings.*, or a simpler pattern"):format(name, STEP_LIMIT, #s), 3)
end

local function guard(name, s, p, may_anchor)
  if type(s) ~= "string" or type(p) ~= "string" then return end
  local steps = bound(s, p, may_anchor)
  if steps > STEP_LIMIT then costly(name, s, p) end
  spend(steps)
end

local function find(s, p, init, plain)
  if type(s) == "string" and type(p) == "string" and (plain or not strfind(p, SPECIALS)) then
    local cost = #s * #p
    if #p > 1 and cost > PLAIN_LIMIT then
      spend(#s)
      return find_plain(s, p, init)
    end
    spend(cost // 8)
    return strfind(s, p, init, plain)
  end
  guard("find", s, p, true)
  return strfind(s, p, init, plain)
end

local function match(s, p, init)
  guard("match", s, p, true)
  return strmatch(s, p, init)
end

local function gmatch(s, p, init)
  guard("gmatch", s, p, false)
  return strgmatch(s, p, init)
end

local function gsub(s, p, repl, max)
  guard("gsub", s, p, true)
  return strgsub(s, p, repl, max)
end

local function rep(s, n, sep)
  if s == "" and (sep == nil or sep == "") and mathtype(n) ~= nil then return "" end
  if type(s) == "string" and type(n) == "number" and n > 0 then
    local size = (#s + (type(sep) == "string" and #sep or 0)) * n
    if size > 0 then spend(size) end
  end
  return strrep(s, n, sep)
end

-- A function linear in its first argument's size: the size is spent before the call.
local function sized(f)
  return function(s, ...)
    if type(s) == "string" then spend(#s) end
    return f(s, ...)
  end
end

-- table.concat's result is as long as its work: spent after the call (one call is bounded by memory).
local function sized_concat(t, sep, i, j)
  local out = tconcat(t, sep, i, j)
  spend(#out)
  return out
end

local function move(a1, f, e, t, a2)
  f, e, t = tointeger(f) or f, tointeger(e) or e, tointeger(t) or t
  if mathtype(f) ~= "integer" or mathtype(e) ~= "integer" or mathtype(t) ~= "integer" or e - f < MOVE_CHUNK then
    return tmove(a1, f, e, t, a2)
  end
  a2 = a2 == nil and a1 or a2
  if t > f and t <= e and rawequal(a1, a2) then
    for lo = e - MOVE_CHUNK + 1, f - MOVE_CHUNK + 1, -MOVE_CHUNK do
      local from = lo < f and f or lo
      tmove(a1, from, lo + MOVE_CHUNK - 1, t + (from - f), a2)
      spend(MOVE_CHUNK)
    end
  else
    for lo = f, e, MOVE_CHUNK do
      local hi = lo + MOVE_CHUNK - 1
      tmove(a1, lo, hi < e and hi or e, t + (lo - f), a2)
      spend(MOVE_CHUNK)
    end
  end
  return a2
end

local function less(a, b) return a < b end

local function sort(t, cmp)
  if type(t) == "table" and #t > 1024 then
    if cmp == nil then
      cmp = less
    else
      local c = cmp
      cmp = function(a, b) return c(a, b) end
    end
  end
  return tsort(t, cmp)
end

return {find = find, match = match, gmatch = gmatch, gsub = gsub, rep = rep, move = move, sort = sort,
        sized = sized, sized_concat = sized_concat,
        contains = function(s, sub) return find(s, sub, 1, true) ~= nil end}
"""


class GcClock:
    """CPU seconds each thread has spent in Python's garbage collector (gc.callbacks), so that a step's own
    time can be told from a collection that ran inside it."""

    def __init__(self) -> None:
        self._spent: dict[int, float] = {}
        self._began: dict[int, float] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        me = threading.get_ident()
        if phase == "start":
            self._began[me] = time.thread_time()
        elif me in self._began:
            self._spent[me] = self._spent.get(me, 0.0) + time.thread_time() - self._began.pop(me)

    def seconds(self) -> float:
        return self._spent.get(threading.get_ident(), 0.0)


GC_CLOCK = GcClock()
