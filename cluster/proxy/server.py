"""The public listener: one handler for every `<service>.<domain>` request.

    Host ─▶ ServicePipeline (404 if unknown or not public) ─▶ CORS preflight?
    ─▶ identify (bearer token or cookie; cache only) ─▶ read body (limit) ─▶ ctx, built once
    ─▶ dynamic config (first matching rule) ─▶ authorize (Service + User + Groups rules; default deny)
    ─▶ upstream request (identity headers stripped, secret injected, X-Forwarded-* set)
    ─▶ relay the response chunk by chunk ─▶ one access-log line
Requests for the bare `<domain>` (token endpoint, discovery, login) go to the `apex` handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from cluster.errors import Unauthenticated, Unavailable
from cluster.identity.authenticate import SESSION_COOKIE, Authenticator, Identity
from cluster.observability.accesslog import AccessLog
from cluster.policy.context import build_ctx, parse_body_map
from cluster.policy.engine import ConditionError, Decision, EvalInput, RuleSet, evaluate
from cluster.proxy.headers import client_response_headers, upstream_request_headers
from cluster.proxy.llm import ResponseTap, request_model
from cluster.proxy.pipeline import GatewayState, Route, ServicePipeline
from cluster.proxy.upstream_auth import OAuth2TokenCache, auth_header
from cluster.resources.common import Effect
from cluster.resources.service import Cors

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
MAX_HOST_LENGTH = 253


class _StreamBroken(Exception):
    """The upstream failed after the client got the status line: the client connection is cut."""


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@dataclass(slots=True)
class Exchange:
    """What one request accumulates for its access-log line."""

    request_id: str
    started: float
    entry: dict[str, Any] = field(default_factory=dict)


def _safe_path(raw_path: str) -> bool:
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path or "%00" in lowered:
        return False
    segments = lowered.replace("%2e", ".").split("/")
    return not any(s in (".", "..") for s in segments)


def _rewrite_path(route: Route, raw_path: str) -> str:
    path_cfg = route.config.http.path
    if path_cfg.remove_prefix:
        prefix = path_cfg.remove_prefix.rstrip("/")
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
    if path_cfg.add_prefix:
        raw_path = path_cfg.add_prefix.rstrip("/") + raw_path
    return route.base_path + raw_path


def _cors_headers(cors: Cors, origin: str) -> dict[str, str] | None:
    if "*" not in cors.allow_origins and origin not in cors.allow_origins:
        return None
    headers = {
        "Access-Control-Allow-Origin": origin if cors.allow_credentials or "*" not in cors.allow_origins else "*",
        "Vary": "Origin",
    }
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(cors.expose_headers)
    return headers


class Gateway:
    """The request handler of the public listener (an aiohttp low-level handler)."""

    def __init__(
        self,
        *,
        domain: str,
        state: Callable[[], GatewayState],
        authenticator: Authenticator,
        access_log: AccessLog,
        client: aiohttp.ClientSession,
        apex: Handler,
        node: str,
        login_url: Callable[[], str | None],
    ) -> None:
        self._domain = domain
        self._suffix = "." + domain
        self._state = state
        self._auth = authenticator
        self._log = access_log
        self._client = client
        self._apex = apex
        self._node = node
        self._login_url = login_url
        self._oauth2 = OAuth2TokenCache(client)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        if host == self._domain:
            return await self._apex(request)
        ex = Exchange(uuid.uuid4().hex, time.perf_counter())
        ex.entry.update(method=request.method, path=request.path, host=host[:MAX_HOST_LENGTH])
        status = 500
        try:
            response = await self._handle(request, host, ex)
            status = response.status
            return response
        except _StreamBroken:
            status = ex.entry.get("upstreamStatus", 502)
            ex.entry["error"] = ex.entry.get("error", "upstream stream broken")
            raise
        except asyncio.CancelledError:
            ex.entry["error"] = "client disconnected"
            status = 499
            raise
        finally:
            self._write_log(request, ex, status)

    def _write_log(self, request: web.BaseRequest, ex: Exchange, status: int) -> None:
        total = time.perf_counter() - ex.started
        self._log.write(
            {
                "time": datetime.now(UTC).isoformat(),
                "requestId": ex.request_id,
                "node": self._node,
                "listener": "public",
                "remote": request.remote,
                **ex.entry,
                "status": status,
                "durationMs": round(total * 1000, 3),
            }
        )

    def _deny(self, ex: Exchange, status: int, reason: str, message: str, kind: str, code: str) -> web.Response:
        ex.entry["reason"] = reason
        response = openai_error(status, message, kind, code)
        response.headers["x-request-id"] = ex.request_id
        if status == 401:
            response.headers["WWW-Authenticate"] = f'Bearer realm="{self._domain}"'
        return response

    def _identify(self, request: web.BaseRequest) -> Identity:
        authorization = request.headers.get("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("Authorization is not `Bearer <token>`")
            return self._auth.from_token(token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return self._auth.from_token(cookie)
        raise Unauthenticated("no credentials")

    def _unauthenticated(self, request: web.BaseRequest, ex: Exchange, reason: str) -> web.StreamResponse:
        login = self._login_url()
        wants_html = "text/html" in request.headers.get("Accept", "")
        if login is not None and wants_html and request.method == "GET":
            ex.entry["reason"] = reason
            target = f"https://{request.host}{request.rel_url}"
            ex.entry["redirect"] = "login"
            return web.Response(status=302, headers={"Location": login + "?" + urlencode({"rd": target})})
        return self._deny(
            ex, 401, reason, "A valid Wardgate access token is required.", "invalid_request_error", "invalid_api_key"
        )

    async def _read_body(self, request: web.BaseRequest, limit: int) -> bytes | None:
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    def _pick_route(self, pipe: ServicePipeline, inp: EvalInput, ex: Exchange) -> Route | None:
        for condition, name in pipe.dynamic_rules:
            try:
                if condition(inp):
                    return pipe.routes[name] if name != "default" else pipe.default
            except ConditionError as exc:
                ex.entry.setdefault("notes", []).append(f"dynamic rule for {name!r} not applied: {exc}")
        return pipe.default

    async def _handle(self, request: web.BaseRequest, host: str, ex: Exchange) -> web.StreamResponse:
        state = self._state()
        name = host[: -len(self._suffix)] if host.endswith(self._suffix) else ""
        pipe = state.services.get(name) if name and "." not in name else None
        if pipe is None or not pipe.service.spec.is_public:
            return self._deny(
                ex,
                404,
                "unknown host",
                f"No service at {host[:MAX_HOST_LENGTH]!r}.",
                "invalid_request_error",
                "not_found",
            )
        ex.entry["service"] = pipe.name
        cors = pipe.default.config.http.cors if pipe.default is not None else None
        origin = request.headers.get("Origin")
        if (
            cors is not None
            and origin
            and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
        ):
            return self._preflight(cors, origin, ex)
        try:
            identity = self._identify(request)
        except Unauthenticated as exc:
            return self._unauthenticated(request, ex, str(exc))
        user = identity.user.metadata.name
        ex.entry.update(
            user=user,
            session=identity.session.metadata.name if identity.session else None,
            sessionType=identity.session.spec.type.value if identity.session else "CLIENTLESS",
            credential=identity.credential.metadata.name if identity.credential else None,
        )
        principal = state.principals.get(user)
        if principal is None:
            return self._deny(
                ex, 403, f"user {user!r} has no compiled policies", "Access denied.", "permission_denied", "forbidden"
            )
        if not _safe_path(request.rel_url.raw_path):
            return self._deny(
                ex, 400, "path escapes its prefix", "Invalid request path.", "invalid_request_error", "invalid_path"
            )
        limit = max(route.config.http.body.max_request_bytes for route in pipe.routes.values())
        body = await self._read_body(request, limit)
        if body is None:
            return self._deny(
                ex,
                413,
                "request body over the limit",
                f"The request body is larger than {limit} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        body_map = parse_body_map(body, request.headers.get("Content-Type", ""))
        ex.entry.update(bytesIn=len(body), model=request_model(body_map))
        session_doc: dict[str, Any] = (
            {"metadata": {"name": identity.session.metadata.name}, "spec": {"type": identity.session.spec.type.value}}
            if identity.session
            else {"metadata": {"name": ""}, "spec": {"type": "CLIENTLESS"}}
        )
        inp = EvalInput(
            build_ctx(
                user=principal.doc,
                session=session_doc,
                service=pipe.doc,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
                host=host,
                scheme="https",
                body=body,
                body_map=body_map,
                ip=request.remote or "",
                time=datetime.now(UTC).isoformat(),
            )
        )
        route = self._pick_route(pipe, inp, ex)
        if route is None:
            return self._deny(
                ex, 404, "no config matched", "No upstream for this request.", "invalid_request_error", "no_route"
            )
        ex.entry["config"] = route.name
        if len(body) > route.config.http.body.max_request_bytes:
            return self._deny(
                ex,
                413,
                "request body over the limit",
                "The request body is too large.",
                "invalid_request_error",
                "request_too_large",
            )
        decision = evaluate(RuleSet.merge(pipe.rules, principal.rules), inp)
        ex.entry["decision"] = _decision_entry(decision)
        if decision.effect is not Effect.ALLOW:
            return self._deny(
                ex, 403, decision.reason.value, "Access denied by policy.", "permission_denied", "forbidden"
            )
        return await self._forward(request, route, body, state, ex, host, origin)

    def _preflight(self, cors: Cors, origin: str, ex: Exchange) -> web.Response:
        headers = _cors_headers(cors, origin)
        ex.entry["reason"] = "cors preflight"
        if headers is None:
            return web.Response(status=403, text="origin not allowed")
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(cors.allow_methods),
                "Access-Control-Allow-Headers": ", ".join(cors.allow_headers),
                "Access-Control-Max-Age": str(cors.max_age),
            }
        )
        return web.Response(status=204, headers=headers)

    async def _forward(
        self,
        request: web.BaseRequest,
        route: Route,
        body: bytes,
        state: GatewayState,
        ex: Exchange,
        host: str,
        origin: str | None,
    ) -> web.StreamResponse:
        http = route.config.http
        headers = upstream_request_headers(request.headers, route.remove_request_headers, SESSION_COOKIE)
        for name, value in route.add_request_headers:
            headers[name] = value
        if http.auth is not None:
            try:
                name, value = await auth_header(http.auth, state.secrets, self._oauth2)
            except Unavailable as exc:
                log.error("service %s: upstream credentials unavailable: %s", ex.entry.get("service"), exc)
                return self._deny(
                    ex,
                    500,
                    str(exc),
                    "The gateway could not authenticate to the upstream.",
                    "server_error",
                    "upstream_auth_unavailable",
                )
            headers[name] = value
        headers["Host"] = route.host_header
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = "https"
        headers["X-Forwarded-Host"] = host
        headers["x-request-id"] = ex.request_id
        query = request.rel_url.raw_query_string
        url = f"{route.scheme}://{route.netloc}{_rewrite_path(route, request.rel_url.raw_path)}"
        if query:
            url += "?" + query
        timeouts = http.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)
        upstream_started = time.perf_counter()
        try:
            async with self._client.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            ) as upstream:
                ex.entry["upstreamStatus"] = upstream.status
                return await self._relay(request, upstream, route, ex, origin, upstream_started)
        except _StreamBroken:
            raise
        except TimeoutError:
            return self._deny(
                ex,
                504,
                "upstream timed out",
                "The upstream did not answer in time.",
                "server_error",
                "upstream_timeout",
            )
        except aiohttp.ClientError as exc:
            return self._deny(
                ex,
                502,
                f"upstream unreachable: {type(exc).__name__}",
                "The upstream is unreachable.",
                "server_error",
                "upstream_unreachable",
            )
        finally:
            ex.entry["upstreamMs"] = round((time.perf_counter() - upstream_started) * 1000, 3)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        route: Route,
        ex: Exchange,
        origin: str | None,
        upstream_started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(client_response_headers(upstream.headers, route.remove_response_headers))
        for name, value in route.add_response_headers:
            response.headers[name] = value
        response.headers["x-request-id"] = ex.request_id
        cors = route.config.http.cors
        if cors is not None and origin:
            response.headers.update(_cors_headers(cors, origin) or {})
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        tap = ResponseTap(upstream.headers.get("Content-Type", ""))
        sent = 0
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if sent == 0:
                    ex.entry["upstreamFirstByteMs"] = round((time.perf_counter() - upstream_started) * 1000, 3)
                tap.feed(chunk)
                await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ex.entry.update(bytesOut=sent, error=f"upstream failed mid-stream: {type(exc).__name__}")
            if request.transport is not None:
                request.transport.abort()
            raise _StreamBroken from exc
        await response.write_eof()
        ex.entry.update(bytesOut=sent, usage=tap.usage())
        return response


def _decision_entry(decision: Decision) -> dict[str, Any]:
    entry: dict[str, Any] = {"effect": decision.effect.value, "reason": decision.reason.value}
    if decision.rule is not None:
        entry.update(policy=decision.rule.policy, rule=decision.rule.rule)
    if decision.detail:
        entry["detail"] = decision.detail
    return entry
