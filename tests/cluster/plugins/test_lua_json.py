"""The Lua-side JSON codec against orjson as the oracle, on generated documents and their mutations: what
orjson reads, json.decode reads to the same value (json.encode writes it back); what orjson refuses,
json.decode refuses with a position. The decoder has fast paths for plain keys and strings beside the
general one, so the documents mix both (escapes, whitespace, nesting, numbers) and break them anywhere."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest

from tests.cluster.plugins.helpers import lua, make_flow
from wardgate.cluster.plugins.builtin.lua import LuaScriptError

ROUND_TRIP = """
function onRequest(ctx)
  local ok, v = pcall(json.decode, wardgate.req.getRequestBody())
  if not ok then wardgate.req.setRequestHeader("x-error", v) return end
  local written, out = pcall(json.encode, v)
  if not written then wardgate.req.setRequestHeader("x-encode-error", out) return end
  wardgate.req.setRequestBody(out)
end
"""
REFUSED = object()
INFINITE = "json.encode: NaN and infinity have no JSON form"
STRINGS = ["a", "", "x\ny", 'q"uote', "back\\slash", "é", "\x7f", "tab\t", "\u2028", "😀", "model", "\x01"]
NUMBERS = [0, -1, 1.5, 1e20, 0.2, 123456789012, -2.5e-3]
PIECES = ['"', "\\", "{", "}", "[", "]", ":", ",", " ", "\n", "a", "1", "0", "-", ".", "e", "\\u00e9", "\\ud800"]
PIECES += ["null", "true", "\x00", "\x1f"]


def _value(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if depth > 4 or r < 0.35:
        return rnd.choice(STRINGS)
    if r < 0.5:
        return rnd.choice(NUMBERS)
    if r < 0.55:
        return rnd.choice([None, True, False])
    if r < 0.75:
        return [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {rnd.choice(STRINGS): _value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))}


def _text(rnd: random.Random, value: Any) -> str:
    """JSON with whitespace anywhere it may go, and escapes (\\uXXXX or raw UTF-8) chosen at random."""

    def ws() -> str:
        return rnd.choice(["", "", " ", "\n ", "\t"])

    if isinstance(value, dict):
        members = [ws() + _text(rnd, k) + ws() + ":" + ws() + _text(rnd, v) + ws() for k, v in value.items()]
        return "{" + ws() + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ws() + ",".join(ws() + _text(rnd, v) + ws() for v in value) + ws() + "]"
    return json.dumps(value, ensure_ascii=rnd.random() < 0.5)


def _mutate(rnd: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rnd.randint(1, 3)):
        at = rnd.randint(0, len(chars))
        roll = rnd.random()
        if roll < 0.4 and chars:
            del chars[min(at, len(chars) - 1)]
        elif roll < 0.8:
            chars.insert(at, rnd.choice(PIECES))
        elif chars:
            chars[min(at, len(chars) - 1)] = rnd.choice(PIECES)
    return "".join(chars)


def _as_lua_sees(value: Any) -> Any:
    """What a decode and encode in Lua keeps: a null member is absent (nil), trailing nulls of an array go
    with it, integers past 2^63 and other numbers are compared as doubles."""
    if isinstance(value, dict):
        return {k: _as_lua_sees(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        items = [_as_lua_sees(v) for v in value]
        while items and items[-1] is None:
            items.pop()
        return items
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(f"{float(value):.12g}")
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


async def _round_trip(plugin: Any, body: bytes) -> tuple[Any, str | None]:
    flow = make_flow(body=body)
    await plugin.request(flow)
    error = flow.request.headers.get("x-error") or flow.request.headers.get("x-encode-error")
    return (None, error) if error is not None else (orjson.loads(flow.request.body), None)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_decode_agrees_with_orjson(seed: int) -> None:
    rnd = random.Random(seed)
    plugin = lua(ROUND_TRIP)
    refused = 0
    for _ in range(1500):
        text = _text(rnd, _value(rnd))
        if rnd.random() < 0.5:
            text = _mutate(rnd, text)
        body = text.encode("utf-8", "surrogatepass")
        try:
            expected: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            expected = REFUSED
        value, error = await _round_trip(plugin, body)
        if expected is REFUSED:
            # orjson refuses a number past a double's range; json.decode reads it as infinity, which
            # json.encode then refuses.
            assert error is not None, body
            decode_error = error.startswith("json.decode: ") and " at byte " in error
            assert decode_error or error == INFINITE, (body, error)
            refused += 1
        elif not _finite(expected):
            assert error == INFINITE, (body, error)
        else:
            assert error is None and _as_lua_sees(value) == _as_lua_sees(expected), (body, error)
    assert 300 < refused < 1200  # both kinds were exercised


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a":"b" "c"}', "',' or '}' expected at byte 10"),
        (b'{"a":"b",}', "object key expected at byte 10"),
        (b'{"a" "b"}', "':' expected at byte 6"),
        (b'["a" "b"]', "',' or ']' expected at byte 6"),
        (b'["a",]', "unexpected character at byte 6"),
        (b'{"a":"b"]', "',' or '}' expected at byte 9"),
        (b'["a"}', "',' or ']' expected at byte 5"),
        (b'{"a":"x\x01"}', "control character in string at byte 8"),
        (b'{"a\x01":1}', "control character in string at byte 4"),
        (b'{"a":"b"', "',' or '}' expected at byte 9"),
    ],
)
async def test_errors_name_the_byte(body: bytes, message: str) -> None:
    _, error = await _round_trip(lua(ROUND_TRIP), body)
    assert error == "json.decode: " + message


async def test_plain_and_escaped_strings_decode_alike() -> None:
    plugin = lua(ROUND_TRIP)
    plain, _ = await _round_trip(plugin, b'{"k":"v","l":["a","b"]}')
    escaped, _ = await _round_trip(plugin, b'{"\\u006b":"\\u0076","l":["\\u0061","b"]}')
    assert plain == escaped == {"k": "v", "l": ["a", "b"]}


async def test_an_uncaught_decode_error_fails_the_call() -> None:
    with pytest.raises(LuaScriptError, match=r"json\.decode: unexpected end of input"):
        await lua("function onRequest(ctx) json.decode('{\"a\":') end").request(make_flow())
