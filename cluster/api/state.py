"""Typed application state keys shared by the API's routes and middlewares."""

from __future__ import annotations

from aiohttp import web

from wardgate.cluster.api.admission import ExpressionCheck
from wardgate.cluster.api.auth import AdminPolicy
from wardgate.cluster.api.policy_eval import PolicyEvaluator
from wardgate.cluster.identity.authenticate import Authenticator
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.store import Store
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.propagation import Propagation

STORE = web.AppKey("store", Store)
CACHE = web.AppKey("cache", ResourceCache)
PROPAGATION: web.AppKey[Propagation] = web.AppKey("propagation")
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ADMIN_POLICY: web.AppKey[AdminPolicy] = web.AppKey("admin_policy")
POLICY_EVAL: web.AppKey[PolicyEvaluator] = web.AppKey("policy_eval")
ACCESS_LOG = web.AppKey("access_log", AccessLog)
CHECK_EXPRESSION: web.AppKey[ExpressionCheck] = web.AppKey("check_expression")
NODE = web.AppKey("node", str)
METRICS = web.AppKey("metrics", Metrics)
