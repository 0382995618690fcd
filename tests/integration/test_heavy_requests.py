"""One heavy request never freezes a node, nor delays a concurrent normal request by more than 100 ms.

The attack suite froze a node for good with a 6-8 MB JSON body sent to a Service whose Lua plugin decodes the
body (or only reads ctx), and stalled every request for seconds with the same body against a Rego policy.
Here a normal client keeps calling a plain Service while hostile bodies hit every heavy path: Lua decoding
the body, Lua reading ctx, a Rego rule and a CEL rule reading bodyMap; under the default limits (bodies
over the parse limit) and at the parse limit (the worst shape that is still parsed: many tiny values).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningCluster
from tests.fakes.provider_process import fake_process
from tests.integration.gateway_env import apply_docs, client_credentials_token

pytestmark = pytest.mark.usefixtures("loopback_names")

KEY = "sk-heavy-upstream"
BUDGET_MS = 100.0

LUA_DECODE = """
function onRequest(ctx)
  local body = json.decode(octelium.req.getRequestBody())
  body.seen = true
  octelium.req.setRequestBody(json.encode(body))
end
"""
LUA_CTX = """
function onRequest(ctx)
  local n = 0
  for _, m in ipairs(wardgate.ctx.request.http.bodyMap.messages or {}) do n = n + 1 end
  wardgate.req.setRequestHeader("x-count", tostring(n))
end
"""
LUA_SLOW = """
function onRequest(ctx)
  -- an admin's script whose work grows with the body: a large enough body drives it to its time limit
  local body, n = octelium.req.getRequestBody(), 0
  for i = 1, #body * 1000 do n = n + 1 end
end
"""
REGO = """package heavy

allow if count(input.ctx.request.http.bodyMap.messages) < 1000000
"""


def _service(
    name: str, upstream: str, condition: dict[str, Any], lua: str | None = None, **limits: Any
) -> dict[str, Any]:
    http: dict[str, Any] = {"auth": {"bearer": {"fromSecret": "upstream-key"}}}
    if lua is not None:
        http["plugins"] = [{"name": "heavy", "lua": {"inline": lua, **limits}}]
    rules = [{"effect": "ALLOW", "condition": condition}]
    return {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "isPublic": True,
            "config": {"upstream": {"url": upstream}, "http": http},
            "authorization": {"inlinePolicies": [{"spec": {"rules": rules}}]},
        },
    }


def _docs(quiet: str, upstream: str) -> list[dict[str, Any]]:
    anyone = {"matchAny": True}
    return [
        {"kind": "User", "metadata": {"name": "bot"}, "spec": {"type": "WORKLOAD"}},
        _service("plain", quiet, anyone),
        _service("lua-decode", upstream, anyone, LUA_DECODE),
        _service("lua-ctx", upstream, anyone, LUA_CTX),
        _service("lua-slow", upstream, anyone, LUA_SLOW),
        # An admin who allows a script a whole second: it must still not hold up anyone else.
        _service("lua-second", upstream, anyone, LUA_SLOW, maxInstructions=1_000_000_000, timeLimit="1s"),
        _service("rego-body", upstream, {"opa": {"inline": REGO}}),
        _service("cel-body", upstream, {"match": "size(ctx.request.http.bodyMap.messages) < 1000000"}),
    ]


def _many_values(size: int) -> bytes:
    """A chat body of about `size` bytes made of as many tiny values as fit: the costliest shape to convert."""
    item = {"role": "user", "content": "a"}
    count = (size - 64) // (len(orjson.dumps(item)) + 1)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [item] * count})
    assert len(body) <= size
    return body


def _at_the_caps() -> bytes:
    """Just under both default parse caps (1 MiB, 10,000 JSON values): the costliest body still parsed."""
    item = {"role": "user", "content": "x" * 310}
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [item] * 3000})  # 9,003 values
    assert 1_000_000 < len(body) <= 1024 * 1024
    return body


class Client:
    def __init__(self, cluster: RunningCluster, token: str) -> None:
        import ssl

        self.cluster = cluster
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.ssl = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))

    async def post(self, session: aiohttp.ClientSession, service: str, body: bytes) -> tuple[int, float]:
        url = self.cluster.public_url(service) + "/v1/chat/completions"
        started = time.perf_counter()
        async with session.post(url, data=io.BytesIO(body), headers=self.headers, ssl=self.ssl) as r:
            await r.read()
            return r.status, (time.perf_counter() - started) * 1000


@pytest.fixture
async def heavy(tmp_path: Path) -> AsyncIterator[Client]:
    from tests.conftest import start_cluster, stop_cluster

    # Two providers: the normal client's answers must not wait behind the provider's own work on hostile bodies.
    async with fake_process("--api-key", KEY) as (_, quiet), fake_process("--api-key", KEY) as (_, upstream):
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home")
        try:
            apply_docs(cluster, _docs(quiet, upstream), tmp_path)
            cluster.ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
            yield Client(cluster, (await client_credentials_token(cluster, "bot-oauth", "bot"))[0])
        finally:
            await asyncio.to_thread(stop_cluster, cluster)


NORMAL = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
HEAVY = ["lua-decode", "lua-ctx", "lua-slow", "lua-second", "rego-body", "cel-body"]


ATTACKER = """
import asyncio, io, json, ssl, sys
import aiohttp

async def main(spec):
    context = ssl.create_default_context(cafile=spec["ca"])
    headers = {"Authorization": "Bearer " + spec["token"], "Content-Type": "application/json"}
    body = open(spec["body"], "rb").read()
    async with aiohttp.ClientSession() as session:
        for host in spec["hosts"]:
            # This process has no name for the test's hosts: dial loopback, with the name for SNI and Host.
            url = "https://127.0.0.1:%d/v1/chat/completions" % spec["port"]
            async with session.post(
                url, data=io.BytesIO(body), headers={**headers, "Host": host}, ssl=context, server_hostname=host
            ) as r:
                await r.read()
                print(r.status, flush=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def _under_attack(client: Client, services: list[str], body: bytes, tmp: Path) -> tuple[list[float], list[int]]:
    """Normal requests' latencies (ms) while the hostile requests run, and the hostile statuses. The attacker is
    another process, so its own TLS and JSON work cannot delay this process's measurements."""
    path = tmp / "hostile.json"
    path.write_bytes(body)
    spec = {
        "ca": str(client.cluster.home / "ca.crt"),
        "token": client.headers["Authorization"].removeprefix("Bearer "),
        "body": str(path),
        "port": client.cluster.public_port,
        "hosts": [f"{s}.{client.cluster.domain}" for s in services],
    }
    normal: list[float] = []
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ATTACKER, json.dumps(spec), stdout=asyncio.subprocess.PIPE
    )
    async with aiohttp.ClientSession() as quiet:
        while attacker.returncode is None:
            status, ms = await client.post(quiet, "plain", NORMAL)
            assert status == 200
            normal.append(ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(attacker.wait(), 0.01)
    out, _ = await attacker.communicate()
    assert attacker.returncode == 0
    return normal, [int(line) for line in out.split()]


async def _baseline(client: Client) -> float:
    async with aiohttp.ClientSession() as session:
        times = [(await client.post(session, "plain", NORMAL))[1] for _ in range(30)]
    return statistics.median(times)


async def test_bodies_over_the_parse_limit_are_refused_at_once_and_delay_nobody(heavy: Client, tmp_path: Path) -> None:
    baseline = await _baseline(heavy)
    big = _many_values(7 * 1024 * 1024)  # under the 10 MiB request limit, over the 1 MiB parse limit
    hostile = [service for service in HEAVY for _ in range(2)]
    normal, statuses = await _under_attack(heavy, hostile, big, tmp_path)
    assert statuses == [413] * len(hostile)
    assert normal, "the normal client got no request through during the attack"
    worst = max(normal) - baseline
    assert worst < BUDGET_MS, f"a normal request was delayed {worst:.0f} ms (baseline {baseline:.1f} ms)"
    async with aiohttp.ClientSession() as session:
        await heavy.post(session, "plain", big)
    # Nothing reads it on `plain`: the gateway passed it through unparsed (the fake upstream has its own limit).
    lines = (heavy.cluster.home / "access.log").read_text().splitlines()
    passed = [e for e in map(orjson.loads, lines) if e.get("service") == "plain" and e.get("bytesIn", 0) > 2**20]
    assert passed and "upstreamStatus" in passed[-1] and "reason" not in passed[-1], passed


@pytest.mark.parametrize("service", HEAVY)
async def test_bodies_at_the_parse_limit_delay_nobody(heavy: Client, tmp_path: Path, service: str) -> None:
    baseline = await _baseline(heavy)
    worst_shape = _at_the_caps()  # parsed, and as costly as the default caps let it be
    hostile = [service] * 3
    normal, statuses = await _under_attack(heavy, hostile, worst_shape, tmp_path)
    assert 413 not in statuses, statuses  # parsed and handed to every heavy path
    assert all(s in (200, 403, 500) for s in statuses), statuses
    assert normal
    worst = max(normal) - baseline
    assert worst < BUDGET_MS, f"a normal request was delayed {worst:.0f} ms (baseline {baseline:.1f} ms): {statuses}"
    async with aiohttp.ClientSession() as session:
        assert (await heavy.post(session, "plain", NORMAL))[0] == 200
