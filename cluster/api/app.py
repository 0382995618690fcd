"""The admin application: middlewares (request id and access log, errors, authentication) and routes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from wardgate.cluster.api import admin
from wardgate.cluster.api.admission import ExpressionCheck
from wardgate.cluster.api.auth import AdminPolicy, caller_of, identify
from wardgate.cluster.api.errors import error_middleware, error_response
from wardgate.cluster.api.health import healthz
from wardgate.cluster.api.policy_eval import PolicyEvaluator
from wardgate.cluster.api.state import (
    ACCESS_LOG,
    ADMIN_POLICY,
    AUTHENTICATOR,
    CACHE,
    CHECK_EXPRESSION,
    METRICS,
    NODE,
    POLICY_EVAL,
    PROPAGATION,
    STORE,
)
from wardgate.cluster.errors import Forbidden, Unauthenticated
from wardgate.cluster.identity.authenticate import Authenticator
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.observability.record import AccessRecord
from wardgate.cluster.store import Store
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.propagation import Propagation

CALLER = "wardgate.caller"
DENIAL = "wardgate.denial"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Unauthenticated on the admin listener (loopback by default): liveness, readiness, Prometheus scraping."""


@web.middleware
async def access_log_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    request[CALLER] = None
    request[DENIAL] = None
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        response.headers["x-request-id"] = request_id
        return response
    finally:
        caller = request[CALLER]
        record = AccessRecord(
            listener="admin",
            method=request.method,
            path=request.path,
            remote=request.remote,
            node=request.app[NODE],
            request_id=request_id,
            user=caller.user if caller else None,
            credential=caller.credential if caller else None,
            session=caller.session if caller else None,
            reason=request[DENIAL],
        )
        record.finish(status, time.perf_counter() - started)
        request.app[ACCESS_LOG].write(record)
        if request.path != "/metrics":
            request.app[METRICS].observe(record)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        try:
            identity = identify(request.app[AUTHENTICATOR], request.headers.get("Authorization"))
            request[CALLER] = caller_of(identity)
            request.app[ADMIN_POLICY].authorize_admin(
                identity, request.method, request.rel_url, request.headers, request.remote or ""
            )
        except Unauthenticated as exc:
            request[DENIAL] = str(exc)
            return error_response(401, "unauthenticated", "a valid admin credential is required")
        except Forbidden as exc:
            request[DENIAL] = str(exc)
            return error_response(403, "forbidden", "access to the admin API is denied by policy")
    result: web.StreamResponse = await handler(request)
    return result


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def malformed_requests(app: web.Application) -> Callable[[web.BaseRequest, int, str], None]:
    """The admin listener's access-log line for a request it could not parse (cluster/proxy/listener.py)."""

    def record(request: web.BaseRequest, status: int, reason: str) -> None:
        entry = AccessRecord(
            listener="admin", method="-", path="-", remote=request.remote, node=app[NODE], reason=reason
        )
        entry.finish(status, 0.0)
        app[ACCESS_LOG].write(entry)

    return record


def make_admin_app(
    store: Store,
    cache: ResourceCache,
    propagation: Propagation,
    authenticator: Authenticator,
    admin_policy: AdminPolicy,
    policy_eval: PolicyEvaluator,
    access_log: AccessLog,
    check_expression: ExpressionCheck,
    node: str,
    metrics_registry: Metrics,
) -> web.Application:
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware, auth_middleware],
        client_max_size=16 * 1024 * 1024,
    )
    app[STORE] = store
    app[CACHE] = cache
    app[PROPAGATION] = propagation
    app[AUTHENTICATOR] = authenticator
    app[ADMIN_POLICY] = admin_policy
    app[POLICY_EVAL] = policy_eval
    app[ACCESS_LOG] = access_log
    app[CHECK_EXPRESSION] = check_expression
    app[NODE] = node
    app[METRICS] = metrics_registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(admin.routes)
    return app
