"""Typed application state keys shared by the API's routes and middlewares."""

from __future__ import annotations

from aiohttp import web

from cluster.api.admission import ExpressionCheck
from cluster.identity.authenticate import Authenticator
from cluster.observability.accesslog import AccessLog
from cluster.store import Store
from cluster.store.cache import ResourceCache

STORE = web.AppKey("store", Store)
CACHE = web.AppKey("cache", ResourceCache)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
CHECK_EXPRESSION: web.AppKey[ExpressionCheck] = web.AppKey("check_expression")
NODE = web.AppKey("node", str)
