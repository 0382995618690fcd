"""The signed identity assertion (real cluster process, real TLS): an upstream verifies `x-wardgate-assertion`
against the cluster's JWKS, as a Service behind Wardgate would; a client cannot send its own."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.integration.gateway_env import apply_docs, client_credentials_token

pytestmark = pytest.mark.usefixtures("loopback_names")

HEADER = "x-wardgate-assertion"
FORGING_KEY = "a-key-the-attacker-picked-0123456789"


class VerifyingUpstream:
    """Answers with the claims of the assertion it got, verified with the cluster's published key."""

    def __init__(self, cluster: RunningCluster, audience: str) -> None:
        self.cluster, self.audience = cluster, audience
        self.received: list[list[str]] = []

    async def _jwks(self) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.cluster.home / "ca.crt"))
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.cluster.public_url() + "/oauth2/jwks", ssl=context) as r,
        ):
            assert r.status == 200
            jwks: dict[str, Any] = await r.json()
            return jwks

    async def handle(self, request: web.Request) -> web.Response:
        values = request.headers.getall(HEADER, [])
        self.received.append(values)
        if len(values) != 1:
            return web.json_response({"error": f"{len(values)} assertions"}, status=401)
        token = values[0]
        keys = {k["kid"]: jwt.PyJWK(k) for k in (await self._jwks())["keys"]}
        header = jwt.get_unverified_header(token)
        key = keys.get(header["kid"])
        if key is None or header["alg"] != "EdDSA":
            return web.json_response({"error": f"unknown key {header}"}, status=401)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.cluster.public_url(),
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        return web.json_response({"claims": claims, "kid": header["kid"]})


def _docs(upstream: str, assertion: dict[str, Any] | None) -> list[dict[str, Any]]:
    http: dict[str, Any] = {} if assertion is None else {"identityAssertion": assertion}
    allow = {"effect": "ALLOW", "condition": {"match": 'ctx.user.metadata.name == "bot"'}}
    return [
        {"kind": "Group", "metadata": {"name": "ml"}, "spec": {}},
        {"kind": "Group", "metadata": {"name": "eng"}, "spec": {}},
        {"kind": "User", "metadata": {"name": "bot"}, "spec": {"type": "WORKLOAD", "groups": ["ml", "eng"]}},
        {
            "kind": "Service",
            "metadata": {"name": "api"},
            "spec": {
                "isPublic": True,
                "config": {"upstream": {"url": upstream}, "http": http},
                "authorization": {"inlinePolicies": [{"spec": {"rules": [allow]}}]},
            },
        },
    ]


@asynccontextmanager
async def _serve(app_handler: Any) -> AsyncIterator[str]:
    server = web.Server(app_handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RunningCluster]:
    running = await asyncio.to_thread(start_cluster, tmp_path / "home")
    try:
        yield running
    finally:
        await asyncio.to_thread(stop_cluster, running)


async def _call(cluster: RunningCluster, token: str, forged: str | None = None) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    headers = {"Authorization": f"Bearer {token}"}
    if forged is not None:
        headers[HEADER] = forged
    async with (
        aiohttp.ClientSession() as session,
        session.get(cluster.public_url("api") + "/whoami", headers=headers, ssl=context) as r,
    ):
        body: dict[str, Any] = await r.json()
        return r.status, body


@pytest.mark.parametrize("audience", [None, "https://api.internal.example"])
async def test_the_upstream_verifies_the_assertion_against_the_jwks(
    cluster: RunningCluster, tmp_path: Path, audience: str | None
) -> None:
    upstream = VerifyingUpstream(cluster, audience or "api")
    async with _serve(upstream.handle) as url:
        setting: dict[str, Any] = {"enabled": True} | ({"audience": audience} if audience else {})
        apply_docs(cluster, _docs(url, setting), tmp_path)
        token, session = await client_credentials_token(cluster, "bot-cred", "bot")
        status, body = await _call(cluster, token)
        assert status == 200, body
        claims = body["claims"]
        assert claims["sub"] == "bot" and claims["sid"] == session
        assert sorted(claims["groups"]) == ["eng", "ml"]
        assert claims["aud"] == (audience or "api")
        assert claims["exp"] - claims["iat"] == 60 and abs(claims["iat"] - time.time()) < 5
        # A forged assertion from the client never reaches the upstream: it gets exactly the cluster's.
        forged = jwt.encode({"sub": "admin", "aud": "api"}, FORGING_KEY, algorithm="HS256")
        status, again = await _call(cluster, token, forged)
        assert status == 200 and again["claims"]["sub"] == "bot", again
        assert all(len(values) == 1 and values[0] != forged for values in upstream.received)
        # Signed once, reused while fresh: the hot path does not sign per request.
        assert again["claims"]["jti"] == claims["jti"]


async def test_without_the_setting_a_client_sent_assertion_is_stripped(cluster: RunningCluster, tmp_path: Path) -> None:
    upstream = VerifyingUpstream(cluster, "api")
    async with _serve(upstream.handle) as url:
        apply_docs(cluster, _docs(url, None), tmp_path)
        token, _ = await client_credentials_token(cluster, "bot-cred", "bot")
        forged = jwt.encode({"sub": "admin", "aud": "api"}, FORGING_KEY, algorithm="HS256")
        status, body = await _call(cluster, token, forged)
        assert status == 401 and body == {"error": "0 assertions"}, body
        assert upstream.received == [[]]


def test_the_setting_is_validated(cluster: RunningCluster, tmp_path: Path) -> None:
    docs = _docs("http://127.0.0.1:9", {"enabled": True, "lifetime": 600})
    (tmp_path / "bad.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    result = cluster.ctl("apply", "-f", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert "identityAssertion" in result.stdout + result.stderr and "lifetime" in result.stdout + result.stderr
