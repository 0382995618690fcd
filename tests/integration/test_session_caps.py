"""Session caps end to end, on the real cluster process: a credential without `maxSessions` keeps its 20
newest Sessions however fast it mints them, and a user keeps 10 browser logins; the oldest is evicted and its
token stops working at once. A refused OAuth2 client is challenged for Basic authentication."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import jwt

from tests.conftest import RunningCluster
from tests.integration import test_browser_login as browser_login
from tests.integration.gateway_env import Gateway, fetch_token, raw
from wardgate.cluster.identity.sessions import BROWSER_SESSIONS_PER_USER, DEFAULT_SESSIONS_PER_CREDENTIAL

env = browser_login.env
pytestmark = browser_login.pytestmark


def sessions(cluster: RunningCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cluster.ctl("get", "sessions", "-o", "json", check=True).stdout)["items"]
    return items


def session_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def test_a_credential_without_maxsessions_keeps_its_newest_sessions(gw: Gateway) -> None:
    secret = gw.client_secrets["bob"]
    first = await fetch_token(gw, "bob-oauth", secret)
    rest = await asyncio.gather(*(fetch_token(gw, "bob-oauth", secret) for _ in range(DEFAULT_SESSIONS_PER_CREDENTIAL)))
    mine = {s["metadata"]["name"] for s in sessions(gw.cluster) if s["spec"].get("credential") == "bob-oauth"}
    assert mine == {session_of(token) for token in rest}
    evicted = (await raw(gw, "GET", "gemini", "/v1/models", headers={"Authorization": f"Bearer {first}"}))[0]
    newest = (await raw(gw, "GET", "gemini", "/v1/models", headers={"Authorization": f"Bearer {rest[-1]}"}))[0]
    assert evicted == 401 and newest != 401
    grants = [e for e in gw.access_log() if e.get("event") == "token" and e.get("credential") == "bob-oauth"]
    assert len(grants) == DEFAULT_SESSIONS_PER_CREDENTIAL + 1 and all(e["status"] == 200 for e in grants)


async def test_a_user_keeps_a_bounded_number_of_browser_logins(env: browser_login.Env) -> None:
    await env.set_idp_user(browser_login.CAROL, {"email": browser_login.CAROL, "email_verified": True})
    tokens = []
    for _ in range(BROWSER_SESSIONS_PER_USER + 1):
        async with env.browser() as client:
            callback_url, _ = await env.to_callback(client)
            callback = await env.get(client, callback_url)
            cookie = callback.cookie("wardgate_session")
            assert callback.status == 302 and cookie is not None, callback.body
            tokens.append(cookie.value)
    carols = {s["metadata"]["name"] for s in sessions(env.cluster) if s["spec"]["user"] == "carol"}
    assert carols == {session_of(token) for token in tokens[1:]}
    async with env.browser() as client:
        evicted = await env.get(client, env.service_url(), headers={"Cookie": f"wardgate_session={tokens[0]}"})
        newest = await env.get(client, env.service_url(), headers={"Cookie": f"wardgate_session={tokens[-1]}"})
    assert evicted.status == 302 and evicted.location.startswith(env.site_url("/login?rd="))
    assert newest.status == 200, newest.body


async def test_a_refused_client_is_challenged_for_basic_authentication(gw: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            gw.token_url(),
            data={"grant_type": "client_credentials"},
            headers={"Authorization": aiohttp.encode_basic_auth("bob-oauth", "wrong")},
            ssl=gw.ssl_context(),
        ) as response,
    ):
        assert response.status == 401 and response.headers["WWW-Authenticate"] == 'Basic realm="wardgate.test"'
        assert await response.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
