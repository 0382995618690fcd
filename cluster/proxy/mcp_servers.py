"""Several MCP servers behind one MCP Service (`upstream.mcpServers`), listed and called as one server.

The flow, after mcp.py has decided every call (policies see the prefixed names):

    initialize ─▶ sent to every server ─▶ one answer (capabilities merged) with a session id of the gateway's
        that stands for every server's own session id: those ids and the user, sealed for the Service
        (identity.sealed, 24 h), so that any worker of any node opens it and another user's call with it fails
    notifications ─▶ every server (202)        ping ─▶ answered here
    tools/list, prompts/list, resources/list ─▶ every server (following nextCursor), names prefixed
        (`gh_` + `search`), resources keep their URI (remembered: which server listed it), then filtered
        per caller as any MCP list
    tools/call, prompts/get ─▶ the server whose prefix the name has, prefix stripped
    resources/read, resources/subscribe ─▶ the server that listed the URI (remembered per process; a worker
        that has not seen the list asks every server's resources/list once)
    DELETE ─▶ every server; GET (listen) ─▶ 405: a multi-server Service has no server-initiated stream

Each server gets the Service's own credential (`http.auth`), never the caller's. A server's answer is JSON or
an SSE stream; the gateway answers JSON. Only the handshake era of the protocol is spoken (`server/discover`
gets "method not found", so clients fall back to `initialize`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.identity.sealed import MAX_SEALED_LENGTH, SealedError, SealedValues
from wardgate.cluster.proxy.upstream_auth import OAuth2TokenCache, auth_header
from wardgate.cluster.resources.service import McpServer, UpstreamAuth

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
MAX_SESSIONS = 100_000
"""Sessions whose resource URIs a process remembers (the oldest are forgotten first)."""
SESSION_TTL_SECONDS = 24 * 3600.0
"""How long a gateway session id opens; then the client gets 404 and starts a new session (as MCP says)."""
MAX_PAGES = 20
MAX_ANSWER_BYTES = 16 << 20
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
LISTS = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources"}
ROUTED_BY_NAME = frozenset({"tools/call", "prompts/get"})
ROUTED_BY_URI = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})

May = Callable[[list[tuple[str, str]]], Awaitable[list[bool]]]
"""Whether the caller may call each (method, name): the list filter of mcp.py."""


class ServerFailed(Exception):
    """A server did not answer as an MCP server (unreachable, an HTTP error, no JSON-RPC answer)."""


class SessionGone(ServerFailed):
    """A server answered 404 to its session id: the session ended there (DELETE, expiry, a restart)."""


@dataclass(slots=True)
class Joint:
    """A gateway session: the user it belongs to, each server's session id (both sealed in the session id the
    client holds), which server listed a URI (this process's memory of the lists it relayed)."""

    user: str
    sessions: dict[str, str | None]
    uris: dict[str, str] = field(default_factory=dict)


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def answer_of(raw: bytes, content_type: str, id_: Any) -> dict[str, Any]:
    """The JSON-RPC answer with `id_` in a server's JSON body or SSE stream (other messages are skipped)."""
    if content_type.startswith("text/event-stream"):
        for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            if not data:
                continue
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("id") == id_ and "method" not in message:
                return message
        raise ServerFailed("no answer in the event stream")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ServerFailed("the answer is not JSON") from None
    if not isinstance(message, dict) or ("result" not in message and "error" not in message):
        raise ServerFailed("the answer is not a JSON-RPC response")
    return message


class McpServers:
    """Speaks to the MCP servers of multi-server Services for one gateway process (see the module docstring)."""

    def __init__(self, client: aiohttp.ClientSession, sealed: SealedValues, capacity: int = MAX_SESSIONS) -> None:
        self._client = client
        self._oauth2 = OAuth2TokenCache(client)
        self._sealed = sealed
        self._uris: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self._capacity = capacity

    def _seal(self, service: str, joint: Joint) -> str:
        sid = self._sealed.seal({"user": joint.user, "sessions": joint.sessions}, service, SESSION_TTL_SECONDS)
        if len(sid) > MAX_SEALED_LENGTH:
            raise ServerFailed("the servers' session ids are too long to carry in one session id")
        self._uris[(service, sid)] = joint.uris
        while len(self._uris) > self._capacity:
            self._uris.popitem(last=False)
        return sid

    def _open(self, service: str, sid: str) -> tuple[Joint | None, str]:
        """The session `sid` stands for, or None and why it does not open."""
        try:
            value = self._sealed.open(sid, service)
        except SealedError as exc:
            return None, exc.reason
        sessions = value.get("sessions")
        if not isinstance(value.get("user"), str) or not isinstance(sessions, dict):
            return None, "sealed session id without user or sessions"
        uris = self._uris.get((service, sid))
        if uris is None:
            uris = self._uris[(service, sid)] = {}
            while len(self._uris) > self._capacity:
                self._uris.popitem(last=False)
        else:
            self._uris.move_to_end((service, sid))
        return Joint(value["user"], sessions, uris), ""

    async def _send(
        self,
        server: McpServer,
        message: Mapping[str, Any],
        session: str | None,
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """POST one message to one server: (its answer, or None for a notification; the session id it gave)."""
        outgoing = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
        if session is not None:
            outgoing[SESSION_HEADER] = session
        try:
            async with self._client.post(
                server.url, data=orjson.dumps(message), headers=outgoing, allow_redirects=False, timeout=timeouts
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(raw) > MAX_ANSWER_BYTES:
                    raise ServerFailed(f"{server.name}: answer larger than {MAX_ANSWER_BYTES} bytes")
                if response.status == 404 and session is not None:
                    raise SessionGone(f"{server.name}: its session ended (HTTP 404)")
                if response.status >= 400:
                    raise ServerFailed(f"{server.name}: HTTP {response.status}")
                created = response.headers.get(SESSION_HEADER)
                if "id" not in message:
                    return None, created
                return answer_of(raw, response.headers.get("Content-Type", ""), message["id"]), created
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerFailed(f"{server.name}: unreachable ({type(exc).__name__})") from None
        except SessionGone:
            raise
        except ServerFailed as exc:
            raise ServerFailed(f"{server.name}: {exc}") from None

    async def handle(
        self,
        *,
        service: str,
        user: str,
        servers: Sequence[McpServer],
        auth: UpstreamAuth | None,
        secrets_: Mapping[str, Mapping[str, str]],
        request: web.BaseRequest,
        messages: Sequence[Mapping[str, Any]],
        denied: Sequence[dict[str, Any]],
        batch: bool,
        may: May,
        timeouts: aiohttp.ClientTimeout,
    ) -> tuple[web.StreamResponse, str]:
        """The answer to the allowed `messages` (plus the `denied` ones' errors), and a note for the access log."""
        headers: dict[str, str] = {}
        version = request.headers.get(VERSION_HEADER)
        if version:
            headers[VERSION_HEADER] = version
        if auth is not None:
            try:
                name, value = await auth_header(auth, secrets_, self._oauth2)
            except Unavailable as exc:
                return _json(_error(None, INTERNAL_ERROR, "upstream credential unavailable"), 502), str(exc)
            headers[name] = value
        sid = request.headers.get(SESSION_HEADER)
        joint: Joint | None = None
        if sid:
            joint, why = self._open(service, sid)
            if joint is None or joint.user != user:
                note = (
                    f"mcp: session id refused ({why})" if joint is None else "mcp: the session belongs to another user"
                )
                return _json(_error(None, -32600, "Session not found"), 404), note
        if request.method == "GET":
            return web.Response(status=405, headers={"Allow": "POST, DELETE"}), "mcp: no listen stream"
        if request.method == "DELETE":
            if joint is not None and sid is not None:
                self._uris.pop((service, sid), None)
                await asyncio.gather(
                    *(self._end(s, joint.sessions.get(s.name), headers, timeouts) for s in servers),
                    return_exceptions=True,
                )
            return web.Response(status=200), "mcp: session ended on every server"
        answers: list[dict[str, Any]] = list(denied)
        created: str | None = None
        try:
            for message in messages:
                method = str(message.get("method", ""))
                if method == "initialize":
                    answer, joint = await self._initialize(service, user, servers, message, headers, timeouts)
                    created = self._seal(service, joint)
                elif "id" not in message:
                    await asyncio.gather(
                        *(self._send(s, message, self._session(joint, s), headers, timeouts) for s in servers)
                    )
                    continue
                else:
                    answer = await self._call(servers, joint, message, headers, timeouts, may)
                answers.append(answer)
        except SessionGone as exc:
            # The gateway's session id still opens (it is not kept anywhere to forget), but a server's session
            # behind it ended: the client starts a new session on 404, as for any MCP server.
            return _json(_error(None, -32600, "Session not found"), 404), f"mcp: {exc}"
        except ServerFailed as exc:
            return _json(_error(None, INTERNAL_ERROR, "an MCP server of this Service failed"), 502), str(exc)
        out = {SESSION_HEADER: created} if created is not None else None
        if not answers:
            return web.Response(status=202, headers=out), "mcp: notifications sent to every server"
        return _json(answers if batch else answers[0], headers=out), f"mcp: {len(servers)} servers"

    @staticmethod
    def _session(joint: Joint | None, server: McpServer) -> str | None:
        return joint.sessions.get(server.name) if joint is not None else None

    async def _end(
        self, server: McpServer, session: str | None, headers: Mapping[str, str], timeouts: aiohttp.ClientTimeout
    ) -> None:
        if session is None:
            return
        async with self._client.delete(
            server.url, headers={**headers, SESSION_HEADER: session}, allow_redirects=False, timeout=timeouts
        ):
            pass

    async def _initialize(
        self,
        service: str,
        user: str,
        servers: Sequence[McpServer],
        message: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
    ) -> tuple[dict[str, Any], Joint]:
        replies = await asyncio.gather(*(self._send(s, message, None, headers, timeouts) for s in servers))
        results: list[dict[str, Any]] = []
        for server, (answer, _) in zip(servers, replies, strict=True):
            if answer is None or not isinstance(answer.get("result"), dict):
                raise ServerFailed(f"{server.name}: initialize failed")
            results.append(answer["result"])
        capabilities: dict[str, Any] = {}
        for result in results:
            for key, value in (result.get("capabilities") or {}).items():
                if isinstance(value, dict):
                    capabilities.setdefault(key, {}).update(value)
        capabilities.get("resources", {}).pop("subscribe", None)
        capabilities.get("tools", {}).pop("listChanged", None)
        joint = Joint(user, {s.name: created for s, (_, created) in zip(servers, replies, strict=True)})
        result = {
            "protocolVersion": results[0].get("protocolVersion"),
            "capabilities": capabilities,
            "serverInfo": {"name": service, "version": "wardgate"},
        }
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": result}, joint

    async def _call(
        self,
        servers: Sequence[McpServer],
        joint: Joint | None,
        message: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
        may: May,
    ) -> dict[str, Any]:
        method, id_ = str(message.get("method", "")), message.get("id")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "ping":
            return {"jsonrpc": "2.0", "id": id_, "result": {}}
        if method in LISTS:
            return await self._list(servers, joint, method, id_, headers, timeouts, may)
        if method == "resources/templates/list":
            items: list[Any] = []
            for server in servers:
                page = await self._page(server, joint, method, id_, None, headers, timeouts)
                items.extend(page.get("resourceTemplates") or [])
            return {"jsonrpc": "2.0", "id": id_, "result": {"resourceTemplates": items}}
        if method in ROUTED_BY_NAME:
            name = params.get("name")
            target = next((s for s in servers if isinstance(name, str) and name.startswith(s.prefix)), None)
            if target is None or not isinstance(name, str):
                return _error(id_, INVALID_PARAMS, f"Unknown name {str(name)[:100]!r}: no server has its prefix")
            forwarded = {**message, "params": {**params, "name": name[len(target.prefix) :]}}
        elif method in ROUTED_BY_URI:
            uri = params.get("uri")
            owner = joint.uris.get(uri) if joint is not None and isinstance(uri, str) else None
            if owner is None and joint is not None and isinstance(uri, str):
                await self._learn_uris(servers, joint, id_, headers, timeouts)
                owner = joint.uris.get(uri)
            target = next((s for s in servers if s.name == owner), None)
            if target is None:
                return _error(id_, INVALID_PARAMS, "Unknown resource: list the resources first")
            forwarded = dict(message)
        else:
            return _error(id_, METHOD_NOT_FOUND, f"Method {method[:100]!r} is not offered by a multi-server Service")
        answer, _ = await self._send(target, forwarded, self._session(joint, target), headers, timeouts)
        assert answer is not None
        return {**answer, "id": id_}

    async def _page(
        self,
        server: McpServer,
        joint: Joint | None,
        method: str,
        id_: Any,
        cursor: str | None,
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if cursor is not None:
            message["params"] = {"cursor": cursor}
        answer, _ = await self._send(server, message, self._session(joint, server), headers, timeouts)
        result = answer.get("result") if answer is not None else None
        if not isinstance(result, dict):
            raise ServerFailed(f"{server.name}: {method} failed")
        return result

    async def _learn_uris(
        self,
        servers: Sequence[McpServer],
        joint: Joint,
        id_: Any,
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
    ) -> None:
        """Which server lists each resource URI, for a session whose lists another process relayed."""
        for server in servers:
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                result = await self._page(server, joint, "resources/list", id_, cursor, headers, timeouts)
                for item in result.get("resources") or []:
                    if isinstance(item, dict) and isinstance(item.get("uri"), str):
                        joint.uris[item["uri"]] = server.name
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str) or not cursor:
                    break

    async def _list(
        self,
        servers: Sequence[McpServer],
        joint: Joint | None,
        method: str,
        id_: Any,
        headers: Mapping[str, str],
        timeouts: aiohttp.ClientTimeout,
        may: May,
    ) -> dict[str, Any]:
        key = LISTS[method]
        merged: list[dict[str, Any]] = []
        for server in servers:
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                result = await self._page(server, joint, method, id_, cursor, headers, timeouts)
                for item in result.get(key) or []:
                    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                        continue
                    if key == "resources":
                        if joint is not None and isinstance(item.get("uri"), str):
                            joint.uris[item["uri"]] = server.name
                        merged.append({**item, "name": server.prefix + item["name"]})
                    else:
                        merged.append({**item, "name": server.prefix + item["name"]})
                next_cursor = result.get("nextCursor")
                if not isinstance(next_cursor, str) or not next_cursor:
                    break
                cursor = next_cursor
        decide = {"tools": "tools/call", "prompts": "prompts/get", "resources": "resources/read"}[key]
        keys = [(decide, str(item.get("uri") if key == "resources" else item["name"])) for item in merged]
        allowed = await may(keys)
        return {"jsonrpc": "2.0", "id": id_, "result": {key: [i for i, ok in zip(merged, allowed, strict=True) if ok]}}
