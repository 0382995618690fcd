"""The console in a real browser: Debian's headless Chromium (driven through Playwright, never its own browser
download) against the real cluster process, the OIDC test provider and a fake OpenAI upstream.

carol signs in through the IdP and sees the Services policy lets her reach (not the one it refuses), with the
snippet for her OAuth2 client; she calls the Service with the OpenAI SDK and her usage and Quota appear; she
revokes the SDK's Session with the keyboard and the SDK's next call fails. ada (group `admins`, so the
`cluster-admins` policy) sees usage by user, the refusal with its reason, the nodes, and revokes carol's
browser Session. Screenshots go to $WARDGATE_SCREENSHOTS when set (docs/screenshots/ for the README).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import openai
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs, create_credential
from tests.integration.test_browser_login import CAROL, CLIENT_SECRET, idp_doc, run_idp, service_doc, user_doc
from wardgate.agent.wg import PrivateKey
from wardgate.client.user_api import SessionEnded, UserApi
from wardgate.cluster.resources.wire import NodeRegistration, NodeStatus, PeerStatus

pytestmark = [
    pytest.mark.usefixtures("loopback_names"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("WARDGATE_SCREENSHOTS")
"""Read at import: the autouse fixture clears WARDGATE_* before each test."""
ADA = "ada@example.com"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP wardgate.test 127.0.0.1, MAP *.wardgate.test 127.0.0.1",
]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "four words of prompt"}]}


@dataclass
class Env:
    cluster: RunningCluster
    idp_url: str
    upstream: FakeOpenAI
    carol_secret: str
    shots: Path
    sdk_clients: list[openai.AsyncOpenAI] = field(default_factory=list)
    """Closed when the test ends, passed or failed (an unclosed socket fails a later test)."""

    def site_url(self, path: str) -> str:
        return self.cluster.public_url() + path

    async def set_idp_user(self, sub: str) -> None:
        async with aiohttp.ClientSession() as client:
            url = f"{self.idp_url}/users/{sub}"
            async with client.put(url, json={"email": sub, "email_verified": True}) as r:
                assert r.status == 204, await r.text()

    async def token(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": "carol-oauth", "client_secret": self.carol_secret}
        async with (
            aiohttp.ClientSession() as client,
            client.post(self.site_url("/oauth2/token"), data=form, ssl=self.cluster.ssl_context()) as r,
        ):
            assert r.status == 200, await r.text()
            return str((await r.json())["access_token"])

    def user_api(self, token: str | None = None) -> UserApi:
        c = self.cluster
        client = UserApi(c.domain, f"127.0.0.1:{c.public_port}", str(c.home / "ca.crt"))
        client.token = token
        return client

    async def admin_put(self, path: str, body: str) -> None:
        headers = {"Authorization": f"Bearer {self.cluster.token}", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.put(self.cluster.url + path, data=body, headers=headers, ssl=self.cluster.ssl_context()) as r,
        ):
            assert r.status == 200, await r.text()

    async def devices(self, *names: str) -> list[tuple[str, str, str]]:
        """A node agent registers; carol's `wardgate` client logs in and connects on each device (an AUTH_TOKEN
        credential each); the agent reports their peers with a handshake. Per device: its Session, access
        token and WireGuard key."""
        node_key = PrivateKey.generate().public_key().to_base64()
        registration = NodeRegistration(wg_public_key=node_key, listen_port=51820)
        await self.admin_put("/agent/v1/nodes/node-1", registration.model_dump_json())
        out, peers = [], []
        for name in names:
            auth_token = create_credential(self.cluster, name, "carol", "auth-token")
            key = PrivateKey.generate().public_key().to_base64()
            async with self.user_api() as client:
                grant = await client.login(auth_token)
                client.token = grant.access_token
                connected = await client.connect(key)
            out.append((connected.session, grant.access_token, key))
            handshake = datetime.now(UTC) - timedelta(seconds=5)
            peers.append(PeerStatus(public_key=key, session=connected.session, last_handshake=handshake))
        await self.admin_put("/agent/v1/nodes/node-1/status", NodeStatus(peers=peers).model_dump_json())
        return out

    def sdk(self, service: str, token: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=self.cluster.public_url(service) + "/v1",
            api_key=token,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=self.cluster.ssl_context()),
        )
        self.sdk_clients.append(client)
        return client

    async def shot(self, page: Page, name: str) -> None:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(SCREENSHOTS) / path.name)


def docs(upstream: str, idp_url: str) -> list[dict[str, Any]]:
    hidden = service_doc(upstream)
    hidden["metadata"]["name"] = "hidden"
    hidden["spec"]["authorization"] = {
        "inlinePolicies": [{"spec": {"rules": [{"effect": "DENY", "condition": {"matchAny": True}}]}}]
    }
    ada = user_doc("ada", ADA)
    ada["spec"]["groups"] = ["admins"]
    quota = {
        "kind": "Quota",
        "metadata": {"name": "carol-daily"},
        "spec": {"subjects": {"users": ["carol"]}, "per": "user", "limits": [{"tokens": 100000, "window": "1d"}]},
    }
    pricing = {
        "kind": "Pricing",
        "metadata": {"name": "openai"},
        "spec": {"currency": "USD", "models": [{"model": "gpt-4o-mini", "input": 0.15, "output": 0.60}]},
    }
    return [idp_doc("main", idp_url), service_doc(upstream), hidden, user_doc("carol", CAROL), ada, quota, pricing]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-packages` installs Debian's chromium")
    upstream = FakeOpenAI()
    with run_idp() as (idp_url, _tap):
        async with upstream.serve() as upstream_url:
            cluster = await asyncio.to_thread(start_cluster, tmp_path / "home")
            try:
                cluster.ctl("create", "secret", "idp-client", "--value", CLIENT_SECRET, check=True)
                apply_docs(cluster, docs(upstream_url, idp_url), tmp_path)
                secret = create_credential(cluster, "carol-oauth", "carol", "oauth2")
                shots = tmp_path / "screenshots"
                shots.mkdir()
                env = Env(cluster, idp_url, upstream, secret, shots)
                yield env
                for client in env.sdk_clients:
                    await client.close()
            finally:
                await asyncio.to_thread(stop_cluster, cluster)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def sign_in(env: Env, browser: Browser, email: str, **options: Any) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh browser profile signed in through the IdP's form, on /console; and its console errors."""
    await env.set_idp_user(email)
    context = await browser.new_context(ignore_https_errors=True, **options)
    page = await context.new_page()
    errors: list[str] = []
    # The IdP's own page links a stylesheet from the internet (unreachable here): only the cluster's pages count.
    origin = env.site_url("/")
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and m.location["url"].startswith(origin) else None,
    )
    await page.goto(env.site_url("/console"))
    assert page.url.startswith(env.idp_url + "/oauth2/authorize?")
    await page.fill('input[name="sub"]', email)
    await page.click('button:has-text("Authorize")')
    await page.wait_for_url(env.site_url("/console"))
    return context, page, errors


async def wait_for_text(page: Page, url: str, selector: str, text: str) -> str:
    """Reload `url` until `selector`'s text holds `text` (the ledger is written in batches, off the path)."""
    for _ in range(50):
        await page.goto(url)
        found = await page.inner_text(selector)
        if text in found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {selector}: {found}")


async def test_console_user_and_admin_pages_in_chromium(env: Env, browser: Browser) -> None:
    context, page, errors = await sign_in(env, browser, CAROL)
    response = await page.goto(env.site_url("/console"))
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
    services = await page.inner_text("section[aria-labelledby=services]")
    assert "svc" in services and "hidden" not in services
    await page.click("summary:has-text('How to call svc')")
    snippet = await page.inner_text("pre[aria-labelledby=py-svc]")
    assert env.site_url("/oauth2/token") in snippet and '"client_id": "carol-oauth"' in snippet
    assert f'base_url="{env.cluster.public_url("svc")}/v1"' in snippet
    assert "baseURL:" in await page.inner_text("pre[aria-labelledby=ts-svc]")
    await page.goto(env.site_url("/console"))
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"

    token = await env.token()
    sdk = env.sdk("svc", token)
    for _ in range(2):
        reply = await sdk.chat.completions.create(**CHAT)
        assert reply.usage is not None
    with pytest.raises(openai.APIStatusError):
        await env.sdk("hidden", token).chat.completions.create(**CHAT)
    used = 2 * (reply.usage.prompt_tokens + reply.usage.completion_tokens)

    # The ledger is written off the request path, its rows in batches: wait for both requests' rows.
    prompt, completion = 2 * reply.usage.prompt_tokens, 2 * reply.usage.completion_tokens
    usage = await wait_for_text(
        page, env.site_url("/console?range=1h"), "section[aria-labelledby=usage]", f"gpt-4o-mini\t2\t{prompt}"
    )
    assert f"svc\t2\t{prompt}\t{completion}\t" in usage, usage
    quotas = await page.inner_text("section[aria-labelledby=quotas]")
    assert "carol-daily" in quotas and "user=carol" in quotas and f"{used} of 100,000" in quotas, quotas
    await page.click("summary:has-text('How to call svc')")
    await env.shot(page, "console-user")

    (laptop, laptop_token, laptop_key), (desktop, _, _) = await env.devices("carol-laptop", "carol-desktop")
    await page.goto(env.site_url("/console"))
    sessions = await page.inner_text("section[aria-labelledby=sessions]")
    assert f"{laptop}\twardgate client\tWireGuard key {laptop_key[:12]}…, 100.64.0.2\tcarol-laptop" in sessions
    async with page.expect_navigation():
        await page.get_by_role("button", name=f"Revoke session {laptop} of carol").click()
    assert laptop not in await page.inner_text("section[aria-labelledby=sessions]")
    async with env.user_api(laptop_token) as lost:
        with pytest.raises(SessionEnded):
            await lost.session()

    sdk_session = jwt.decode(token, options={"verify_signature": False})["sub"]
    revoke = page.get_by_role("button", name=f"Revoke session {sdk_session} of carol")
    await revoke.focus()
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert page.url == env.site_url("/console"), await page.content()
    assert sdk_session not in await page.inner_text("section[aria-labelledby=sessions]")
    with pytest.raises(openai.AuthenticationError):
        await sdk.chat.completions.create(**CHAT)
    await sdk.close()

    denied = await page.goto(env.site_url("/console/admin"))
    assert denied is not None and denied.status == 403
    await forged_posts(env, context)

    phone = await browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    cookie = next(c for c in await context.cookies() if c["name"] == "wardgate_session")
    await phone.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": env.site_url("/")}])
    small = await phone.new_page()
    await small.goto(env.site_url("/console"))
    assert await small.evaluate("document.documentElement.scrollWidth") <= 390
    await env.shot(small, "console-phone")

    admin_context, admin, admin_errors = await sign_in(env, browser, ADA)
    await admin.click("nav >> text=Admin")
    by_user = await admin.inner_text("section[aria-labelledby=usage]")
    assert "carol" in by_user and "Tokens per group" in by_user
    refusals = await admin.inner_text("section[aria-labelledby=refusals]")
    assert "hidden.wardgate.test" in refusals and "403" in refusals, refusals
    nodes = await admin.inner_text("section[aria-labelledby=nodes]")
    assert "node-1\t(the cluster's host):51820" in nodes and "\tyes" in nodes, nodes
    assert f"carol\t{desktop}\t" in nodes and "100.64.0.3\tnode-1: 20" in nodes and laptop not in nodes, nodes
    await env.shot(admin, "console-admin")
    await others_session(env, context, admin_context)
    carol_session = jwt.decode(cookie["value"], options={"verify_signature": False})["sub"]
    await admin.get_by_role("button", name=f"Revoke session {carol_session} of carol").click()
    await admin.wait_for_url(env.site_url("/console/admin"))
    await page.goto(env.site_url("/console"))
    assert page.url.startswith(env.idp_url + "/oauth2/authorize?")
    # What the console's pages log: only the expected refusals (403 above, no favicon); no CSP violation.
    logged = [e for e in errors + admin_errors if "responded with a status of 40" not in e]
    assert logged == [], logged
    for ctx in (context, phone, admin_context):
        await ctx.close()


async def forged_posts(env: Env, context: BrowserContext) -> None:
    """A form post without the CSRF field, or from another origin, revokes nothing."""
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    mine = jwt.decode(cookies["wardgate_session"], options={"verify_signature": False})["sub"]
    url = env.site_url(f"/console/sessions/{mine}/revoke")
    headers = {"Cookie": f"wardgate_session={cookies['wardgate_session']}"}
    async with aiohttp.ClientSession() as client:
        async with client.post(url, data={"back": "/console"}, headers=headers, ssl=env.cluster.ssl_context()) as r:
            assert r.status == 403
        async with client.get(env.site_url("/console"), headers=headers, ssl=env.cluster.ssl_context()) as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        evil = {**headers, "Origin": "https://evil.wardgate.test", "Sec-Fetch-Site": "same-site"}
        async with client.post(url, data={"csrf": csrf}, headers=evil, ssl=env.cluster.ssl_context()) as r:
            assert r.status == 403
    assert mine in env.cluster.ctl("get", "sessions", check=True).stdout


async def others_session(env: Env, context: BrowserContext, admin_context: BrowserContext) -> None:
    """carol, with a valid form, cannot revoke ada's Session: the admin policy decides, and says nothing."""
    carol = next(c["value"] for c in await context.cookies() if c["name"] == "wardgate_session")
    ada = next(c["value"] for c in await admin_context.cookies() if c["name"] == "wardgate_session")
    target = jwt.decode(ada, options={"verify_signature": False})["sub"]
    headers = {"Cookie": f"wardgate_session={carol}", "Origin": env.site_url(""), "Sec-Fetch-Site": "same-origin"}
    async with aiohttp.ClientSession() as client:
        async with client.get(env.site_url("/console"), headers=headers, ssl=env.cluster.ssl_context()) as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        url = env.site_url(f"/console/sessions/{target}/revoke")
        async with client.post(url, data={"csrf": csrf}, headers=headers, ssl=env.cluster.ssl_context()) as r:
            assert r.status == 404 and target not in await r.text()
    assert target in env.cluster.ctl("get", "sessions", check=True).stdout
