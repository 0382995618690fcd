"""From resource specs to plugin instances: validation at admission, and building with reuse.

`check_plugin` is what `wardgatectl apply` runs (via cluster.api.admission): a Lua script must
compile and load, with its line number in the message when it does not. `PluginBuilder` makes the
instances when the gateway state is rebuilt and keeps them while their spec is unchanged, so Lua
runtime pools and gRPC channels survive unrelated resource changes.
"""

from __future__ import annotations

import hashlib
import logging

import aiohttp

from wardgate.cluster.plugins.builtin.direct_response import DirectResponse
from wardgate.cluster.plugins.builtin.extproc import ExtProc
from wardgate.cluster.plugins.builtin.headers import Headers
from wardgate.cluster.plugins.builtin.lua import check_script, make_lua_plugin
from wardgate.cluster.plugins.manager import Entry, PluginChain
from wardgate.cluster.policy import cel
from wardgate.cluster.policy.engine import compile_condition
from wardgate.cluster.resources.service import Plugin

log = logging.getLogger(__name__)


def check_plugin(spec: Plugin) -> str | None:
    """None when the plugin can be built, else why not (shown by `wardgatectl apply`)."""
    if spec.lua is not None:
        problem = check_script(spec.name, spec.lua)
        return None if problem is None else f"Lua: {problem}"
    return None


class PluginBuilder:
    """Builds plugins for the gateway state and owns what they share (an HTTP client session)."""

    def __init__(self) -> None:
        self._instances: dict[str, object] = {}
        self._used: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The client session for Lua's http.client(); made on first use, inside the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _instance(self, spec: Plugin) -> object:
        key = hashlib.sha256(spec.model_dump_json(exclude={"condition", "fail_open"}).encode()).hexdigest()
        self._used.add(key)
        found = self._instances.get(key)
        if found is None:
            found = self._make(spec)
            self._instances[key] = found
        return found

    def _make(self, spec: Plugin) -> object:
        if spec.lua is not None:
            return make_lua_plugin(spec.name, spec.lua, self.session)
        if spec.ext_proc is not None:
            return ExtProc(spec.name, spec.ext_proc)
        if spec.direct_response is not None:
            return DirectResponse(spec.name, spec.direct_response)
        assert spec.headers is not None
        return Headers(spec.name, spec.headers)

    def chain(self, plugins: list[Plugin], compiler: cel.Compiler) -> PluginChain:
        """The chain for one Service config. Raises when a plugin cannot be built (e.g. a Lua error)."""
        entries = [
            Entry(
                name=spec.name,
                plugin=self._instance(spec),
                condition=None if spec.condition is None else compile_condition(spec.condition, compiler),
                fail_open=spec.fail_open,
            )
            for spec in plugins
        ]
        return PluginChain(entries)

    def prune(self) -> None:
        """Forget the instances the last build did not use (call after each full build)."""
        for key in set(self._instances) - self._used:
            del self._instances[key]
        self._used = set()

    async def aclose(self) -> None:
        for instance in self._instances.values():
            if isinstance(instance, ExtProc):
                await instance.aclose()
        self._instances.clear()
        if self._session is not None:
            await self._session.close()
