"""The Python half of the Lua API: `wardgate.req`/`wardgate.resp` on the flow, `ctx` levels, strings.

Nothing here touches Lua: callbacks take and return bytes, ints and bools, and lua.py checks every
returned string against the memory the runtime has left before lupa pushes it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import fastjsonschema
import orjson

from wardgate.cluster.plugins.flow import HttpFlow, Response

REQUEST, RESPONSE, LOAD = "request", "response", "load"
_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade", b"te"})
_ARRAY, _OBJECT, _RAW = 1, 2, 3
_WHOLE_ITEMS, _WHOLE_BYTES = 64, 16 * 1024


class LuaScriptError(Exception):
    """A script failed to compile, raised an error, or exceeded a bound (the message says which)."""


def text(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise LuaScriptError(f"{what} must be a string")
    return value


def _header_name(value: object) -> str:
    name = text(value, "a header name")
    if not _HEADER_NAME.match(name):
        raise LuaScriptError(f"invalid header name {name!r}")
    if name.lower() in _FRAMING_HEADERS:
        raise LuaScriptError(f"header {name.decode()!r} is managed by the gateway")
    return name.decode()


def _header_value(value: object) -> str:
    raw = text(value, "a header value")
    if any(c in raw for c in b"\r\n\x00"):
        raise LuaScriptError("a header value may not contain CR, LF or NUL")
    return raw.decode("latin-1")


def _status(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise LuaScriptError(f"status must be an integer from 100 to 599, got {value!r}")
    return value


def _check_path(path: bytes) -> str:
    decoded = path.decode("latin-1")
    lowered = decoded.lower()
    if not decoded.startswith("/") or not decoded.isascii() or any(c in decoded for c in "?# \\\t\r\n\x00"):
        raise LuaScriptError(f"setPath: {decoded!r} must be an absolute path without query or fragment")
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise LuaScriptError(f"setPath: {decoded!r} has an encoded separator")
    if any(s in (".", "..") for s in lowered.replace("%2e", ".").split("/")):
        raise LuaScriptError(f"setPath: {decoded!r} has '.' or '..' segments")
    return decoded


_schemas: collections.OrderedDict[str, Callable[[Any], Any]] = collections.OrderedDict()


def _schema_validator(schema: str) -> Callable[[Any], Any]:
    """Compiled validators, cached by the schema's hash (scripts pass the same schema every call)."""
    key = hashlib.sha256(schema.encode()).hexdigest()
    found = _schemas.get(key)
    if found is None:
        try:
            found = fastjsonschema.compile(orjson.loads(schema))
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaDefinitionException) as exc:
            raise LuaScriptError(f"json.isSchemaValid: invalid schema: {exc}") from exc
        _schemas[key] = found
        if len(_schemas) > 256:
            _schemas.popitem(last=False)
    else:
        _schemas.move_to_end(key)
    return found


def _container(value: object) -> int:
    if isinstance(value, bytes):
        return _RAW
    if isinstance(value, list | tuple):
        return _ARRAY
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return _OBJECT
    return 0


class FlowApi:
    """One call's view of the flow: what the script may read and change, and the answer it gives."""

    def __init__(self) -> None:
        self.flow: HttpFlow | None = None
        self.phase = LOAD
        self.answered = False
        self.answer_status: int | None = None
        self.answer_body: bytes | None = None
        self.header_edits: list[tuple[str, str | None]] = []
        self.nodes: list[Any] = []

    def reset(self, flow: HttpFlow | None, phase: str) -> None:
        self.flow, self.phase = flow, phase
        self.answered, self.answer_status, self.answer_body = False, None, None
        self.header_edits = []
        self.nodes = [] if flow is None else [flow.ctx]

    def _flow(self, *phases: str) -> HttpFlow:
        if self.flow is None or self.phase not in phases:
            allowed = " or ".join("onRequest" if p == REQUEST else "onResponse" for p in phases)
            raise LuaScriptError(f"only available in {allowed}")
        return self.flow

    def _response(self) -> Response:
        response = self._flow(RESPONSE).response
        assert response is not None
        return response

    # -- ctx: one level at a time (lua_json's lazy documents) ------------------------------------------

    def ctx_node(self, handle: object) -> bytes:
        """JSON `[values, refs]` for one container of ctx: all of it when small and plain JSON, else one
        level with nested containers (and byte strings) as refs."""
        node = self._node(handle)
        if len(node) <= _WHOLE_ITEMS:
            try:
                whole = orjson.dumps([node, {}])
            except TypeError:
                whole = b""
            if whole and len(whole) <= _WHOLE_BYTES:
                return whole
        refs: dict[str, list[int]] = {}
        values: Any
        if _container(node) == _ARRAY:
            values = []
            for index, item in enumerate(node):
                kind = _container(item)
                if kind:
                    refs[str(index)] = [self._ref(item), kind]
                values.append(None if kind else item)
        else:
            values = {}
            for key, item in node.items():
                kind = _container(item)
                if kind:
                    refs[str(key)] = [self._ref(item), kind]
                else:
                    values[str(key)] = item
        try:
            return orjson.dumps([values, refs], default=str)
        except orjson.JSONEncodeError as exc:
            raise LuaScriptError(f"ctx: {exc}") from exc

    def ctx_raw(self, handle: object) -> bytes:
        return bytes(self._node(handle))

    def _node(self, handle: object) -> Any:
        self._flow(REQUEST, RESPONSE)
        if not isinstance(handle, int) or not 0 <= handle < len(self.nodes):
            raise LuaScriptError("ctx: no such value")
        return self.nodes[handle]

    def _ref(self, value: object) -> int:
        self.nodes.append(value)
        return len(self.nodes) - 1

    # -- wardgate.req / wardgate.resp ------------------------------------------------------------------

    def get_body(self) -> bytes:
        return self._flow(REQUEST, RESPONSE).request.body

    def set_body(self, body: object) -> None:
        self._flow(REQUEST).request.body = text(body, "the body")

    def get_header(self, name: object) -> bytes | None:
        value = self._flow(REQUEST, RESPONSE).request.headers.get(text(name, "a header name").decode("latin-1"))
        return None if value is None else value.encode("latin-1")

    def set_header(self, name: object, value: object) -> None:
        self._flow(REQUEST).request.headers[_header_name(name)] = _header_value(value)

    def delete_header(self, name: object) -> None:
        self._flow(REQUEST).request.headers.popall(_header_name(name), None)

    def get_path(self) -> bytes:
        return self._flow(REQUEST, RESPONSE).request.path.encode("latin-1")

    def set_path(self, path: object) -> None:
        self._flow(REQUEST).request.path = _check_path(text(path, "the path"))

    def get_method(self) -> bytes:
        return self._flow(REQUEST, RESPONSE).request.method.encode()

    def _query(self) -> list[tuple[str, str]]:
        return parse_qsl(self._flow(REQUEST, RESPONSE).request.query, keep_blank_values=True)

    def get_query(self, name: object) -> bytes | None:
        key = text(name, "a query parameter").decode("utf-8", "replace")
        return next((v.encode() for k, v in self._query() if k == key), None)

    def set_query(self, name: object, value: object) -> None:
        key = text(name, "a query parameter").decode("utf-8", "replace")
        pairs = [(k, v) for k, v in self._query() if k != key]
        pairs.append((key, text(value, "a query value").decode("utf-8", "replace")))
        self._flow(REQUEST).request.query = urlencode(pairs, quote_via=quote)

    def delete_query(self, name: object) -> None:
        key = text(name, "a query parameter").decode("utf-8", "replace")
        self._flow(REQUEST).request.query = urlencode([(k, v) for k, v in self._query() if k != key], quote_via=quote)

    def answer_with_body(self, body: object) -> None:
        self._flow(REQUEST)
        self.answered, self.answer_body = True, text(body, "the response body")

    def answer_with_status(self, status: object) -> None:
        self._flow(REQUEST)
        self.answered, self.answer_status = True, _status(status)

    def edit_response_header(self, name: object, value: object) -> None:
        if self._flow(REQUEST, RESPONSE) and self.phase == RESPONSE:
            self._response().headers[_header_name(name)] = _header_value(value)
        else:
            self.header_edits.append((_header_name(name), _header_value(value)))

    def delete_response_header(self, name: object) -> None:
        if self._flow(REQUEST, RESPONSE) and self.phase == RESPONSE:
            self._response().headers.popall(_header_name(name), None)
        else:
            self.header_edits.append((_header_name(name), None))

    def resp_get_body(self) -> bytes:
        return self._response().body or b""

    def resp_set_body(self, body: object) -> None:
        self._response().body = text(body, "the response body")

    def resp_get_code(self) -> int:
        return self._response().status

    def resp_get_header(self, name: object) -> bytes | None:
        value = self._response().headers.get(text(name, "a header name").decode("latin-1"))
        return None if value is None else value.encode("latin-1")

    def resp_set_status(self, status: object) -> None:
        self._response().status = _status(status)

    # -- json schema, base64, strings ------------------------------------------------------------------

    @staticmethod
    def json_schema_valid(schema: object, document: object) -> bool:
        validate = _schema_validator(text(schema, "schema").decode("utf-8", "replace"))
        try:
            validate(orjson.loads(text(document, "the document")))
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaValueException):
            return False
        return True

    @staticmethod
    def base64_encode(value: object) -> bytes:
        return base64.b64encode(text(value, "base64.encode's argument"))

    @staticmethod
    def base64_decode(value: object) -> bytes:
        try:
            return base64.b64decode(text(value, "base64.decode's argument"), validate=True)
        except binascii.Error as exc:
            raise LuaScriptError(f"base64.decode: {exc}") from exc

    @staticmethod
    def strings_len(value: object) -> int:
        return len(text(value, "s").decode("utf-8", "surrogateescape"))

    @staticmethod
    def unicode(value: object, change: Callable[[str], str]) -> bytes:
        return change(text(value, "s").decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    @staticmethod
    def strings_trim(value: object, cutset: object = None) -> bytes:
        decoded = text(value, "s").decode("utf-8", "surrogateescape")
        cut = None if cutset is None else text(cutset, "cutset").decode("utf-8", "surrogateescape")
        return decoded.strip(cut).encode("utf-8", "surrogateescape")

    @staticmethod
    def find_plain(subject: object, sub: object, init: object = None) -> tuple[int, int] | None:
        """string.find(s, p, init, true) in linear time (CPython's two-way search)."""
        s, p = text(subject, "s"), text(sub, "pattern")
        start = 1 if init is None else init
        if not isinstance(start, int) or isinstance(start, bool):
            raise LuaScriptError("string.find: init must be an integer")
        if start < 0:
            start = max(len(s) + start + 1, 1)
        elif start == 0:
            start = 1
        if start > len(s) + 1:
            return None
        found = s.find(p, start - 1)
        return None if found < 0 else (found + 1, found + len(p))
