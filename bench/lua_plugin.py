"""µs per Lua `onRequest` call: the seed's safe-gemini script (its HTTP calls stubbed) and an empty script.

    .venv/bin/python bench/lua_plugin.py [--calls 5000]

The plugin runs as the gateway runs it (pooled runtime, count hook, the Lua-side JSON codec, a fresh
HttpFlow per call); the guardrail answers `{"allowed": true}` and the semantic cache misses, both
without sockets, so the numbers are the script's and the sandbox's, not the network's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from multidict import CIMultiDict

from wardgate.cluster.plugins.builtin.lua import make_lua_plugin
from wardgate.cluster.plugins.flow import HttpFlow, Request
from wardgate.cluster.resources.service import LuaPluginSpec, Service

REPO = Path(__file__).resolve().parent.parent
BODY = orjson.dumps(
    {
        "model": "gemini-2.5-pro",
        "temperature": 0.9,
        "messages": [
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences. " * 4},
            {"role": "assistant", "content": "Prince Hamlet seeks revenge for his father's murder. " * 4},
            {"role": "user", "content": "Now in one sentence, please, and keep it short. " * 4},
        ],
    }
)
CTX: dict[str, Any] = {
    "user": {"metadata": {"name": "alice"}, "spec": {"groups": ["dev"]}},
    "request": {"http": {"method": "POST", "path": "/v1/chat/completions", "host": "safe-gemini.example"}},
}


class StubHttp:
    """Stands in for LuaHttp: the guardrail allows, the cache misses."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def base(self, url: str) -> str:
        return str(self._real.base(url))

    def request_headers(self, pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
        return dict(self._real.request_headers(pairs))

    async def call(self, session: Any, base: str, method: str, path: str, headers: Any, body: Any) -> Any:
        if path == "/v1/check":
            return 200, b'{"allowed":true}', {}
        return 404, b"{}", {}


def seed_script() -> LuaPluginSpec:
    doc = yaml.safe_load((REPO / "configs" / "resources" / "safe-gemini.yaml").read_text())
    lua = Service.model_validate(doc).spec.config.http.plugins[0].lua  # type: ignore[union-attr]
    assert lua is not None
    return lua


def flow() -> HttpFlow:
    return HttpFlow("safe-gemini", "bench", Request("POST", "/v1/chat/completions", "", CIMultiDict(), BODY), CTX)


async def measure(name: str, spec: LuaPluginSpec, calls: int) -> None:
    plugin: Any = make_lua_plugin(name, spec, lambda: None)  # type: ignore[arg-type,return-value]
    plugin._http = StubHttp(plugin._http)
    for _ in range(200):
        await plugin.request(flow())
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            await plugin.request(flow())
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    check = flow()
    await plugin.request(check)
    print(
        f"{name:<28} {statistics.median(rounds):8.1f} µs/onRequest (median of 5 x {calls}; "
        f"min {min(rounds):.1f}; body {len(BODY)} B -> {len(check.request.body)} B)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    await measure("empty script", LuaPluginSpec(inline="function onRequest(ctx) end"), args.calls)
    await measure("safe-gemini (HTTP stubbed)", seed_script(), args.calls)


if __name__ == "__main__":
    asyncio.run(main())
