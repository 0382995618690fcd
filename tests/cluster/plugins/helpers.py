"""Small builders for plugin tests: flows and Lua plugins from inline scripts."""

from __future__ import annotations

from typing import Any

import aiohttp
from multidict import CIMultiDict

from wardgate.cluster.plugins.builtin.lua import make_lua_plugin
from wardgate.cluster.plugins.flow import HttpFlow, Request
from wardgate.cluster.resources.service import LuaPluginSpec


def make_flow(
    body: bytes = b"{}", path: str = "/v1/chat", query: str = "", headers: dict[str, str] | None = None
) -> HttpFlow:
    ctx: dict[str, Any] = {
        "user": {"metadata": {"name": "alice"}, "spec": {"groups": ["dev"]}},
        "request": {"http": {"method": "POST", "path": path, "host": "svc.wardgate.test"}},
    }
    request = Request("POST", path, query, CIMultiDict(headers or {}), body)
    return HttpFlow("svc", "req-1", request, ctx)


def lua(script: str, session: aiohttp.ClientSession | None = None, **options: Any) -> Any:
    spec = LuaPluginSpec.model_validate({"inline": script, **options})

    def client() -> aiohttp.ClientSession:
        assert session is not None, "this test gave the plugin no HTTP session"
        return session

    return make_lua_plugin("test", spec, client)
