"""An interactive MCP client signs its user in as MCP clients do: the official `mcp` SDK's OAuthClientProvider
discovers the protected resource and Wardgate's authorization server, registers itself (RFC 7591), and runs the
authorization-code flow with PKCE; the "browser" follows each redirect by hand through the cluster's browser
login and a real OIDC provider (oidc-provider-mock, as in test_browser_login). The gateway is the real cluster
process, the MCP server a real `mcp` SDK server process."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import aiohttp
import httpx2
import jwt
import pytest
import yaml
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError

from tests.conftest import REPO, RunningCluster, start_cluster, stop_cluster
from tests.integration.gateway_env import apply_docs
from tests.integration.mcp_env import McpServer, mcp_server
from tests.integration.test_browser_login import CLIENT_SECRET, idp_doc, run_idp

pytestmark = [
    pytest.mark.usefixtures("loopback_names"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

EXAMPLE = REPO / "configs" / "mcp" / "docs-mcp.yaml"
SERVICE_TOKEN = "docs-mcp-upstream-token-0005"
REDIRECT = "http://127.0.0.1:47811/callback"
USERS = {"carol": ("carol@example.com", ["dev"]), "erin": ("erin@example.com", ["dev", "ops"])}


class MemoryStorage:
    """The SDK's TokenStorage, in memory (a desktop client would keep it on disk)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@dataclass
class Env:
    cluster: RunningCluster
    idp_url: str
    server: McpServer
    visited: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)

    def tls(self) -> ssl.SSLContext:
        return self.cluster.ssl_context()

    async def browse_to_redirect(self, browser: aiohttp.ClientSession, url: str, sub: str) -> str:
        """Follow redirects as a browser would, signing in `sub` at the IdP's form, until one leaves for the
        client's loopback redirect URI; that URL is returned (the client's listener would receive it)."""
        for _ in range(12):
            self.visited.append(url.split("?")[0])
            if url.startswith(REDIRECT):
                return url
            tls: ssl.SSLContext | bool = self.tls() if url.startswith("https://") else True
            if url.startswith(self.idp_url + "/oauth2/authorize"):
                async with browser.post(url, data={"sub": sub}, allow_redirects=False, ssl=tls) as r:
                    assert r.status == 302, await r.text()
                    url = urljoin(url, r.headers["Location"])
                continue
            async with browser.get(url, allow_redirects=False, ssl=tls) as r:
                assert r.status == 302, (url, r.status, await r.text())
                url = urljoin(url, r.headers["Location"])
        raise AssertionError(f"no redirect to the client after {self.visited}")

    def provider(self, service: str, browser: aiohttp.ClientSession, sub: str) -> OAuthClientProvider:
        landed: list[str] = []

        async def redirect_handler(url: str) -> None:
            landed.append(await self.browse_to_redirect(browser, url, sub))

        async def callback_handler() -> AuthorizationCodeResult:
            query = {k: v[0] for k, v in parse_qs(urlsplit(landed.pop()).query).items()}
            assert "error" not in query, query
            self.codes.append(query["code"])
            return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

        return OAuthClientProvider(
            server_url=self.cluster.public_url(service) + "/mcp",
            client_metadata=OAuthClientMetadata(
                redirect_uris=[REDIRECT],
                token_endpoint_auth_method="none",
                grant_types=["authorization_code"],
                response_types=["code"],
                client_name="wardgate test client",
            ),
            storage=MemoryStorage(),
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
        )

    async def set_idp_user(self, email: str) -> None:
        async with (
            aiohttp.ClientSession() as client,
            client.put(
                f"{self.idp_url}/users/{quote(email, safe='')}", json={"email": email, "email_verified": True}
            ) as r,
        ):
            assert r.status == 204, await r.text()


def _service(upstream: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["config"]["upstream"]["url"] = upstream
    return doc


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    with run_idp() as (idp_url, _tap):
        async with mcp_server(tmp_path, "sse") as server:
            cluster = await asyncio.to_thread(
                start_cluster, tmp_path / "home", extra_settings="[oauth.registration]\nenabled = true\n"
            )
            try:
                cluster.ctl("create", "secret", "idp-client", "--value", CLIENT_SECRET, check=True)
                cluster.ctl("create", "secret", "docs-mcp-token", "--value", SERVICE_TOKEN, check=True)
                users = [
                    {"kind": "User", "metadata": {"name": n}, "spec": {"type": "HUMAN", "email": e, "groups": g}}
                    for n, (e, g) in USERS.items()
                ]
                docs = [idp_doc("main", idp_url), *users, _service(server.url, "docs-mcp")]
                apply_docs(cluster, [*docs, _service(server.url, "docs-mcp-b")], tmp_path)
                yield Env(cluster, idp_url, server)
            finally:
                await asyncio.to_thread(stop_cluster, cluster)


async def test_an_mcp_client_signs_its_user_in_and_sees_only_what_the_user_may_call(env: Env) -> None:
    seen: dict[str, set[str]] = {}
    for user, (email, _) in USERS.items():
        await env.set_idp_user(email)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar()) as browser:
            provider = env.provider("docs-mcp", browser, email)
            http = httpx2.AsyncClient(auth=provider, verify=env.tls())
            url = env.cluster.public_url("docs-mcp") + "/mcp"
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                seen[user] = {tool.name for tool in (await client.list_tools()).tools}
                found = await client.call_tool("search_docs", {"query": "q1"})
                assert found.content[0].text == "found: q1"  # type: ignore[union-attr]
                with pytest.raises(MCPError, match="delete_doc") as denied:
                    await client.call_tool("delete_doc", {"name": "x"})
                assert denied.value.error.code == -32001
                if user == "erin":
                    answer = await client.call_tool("whoami", {})
                    assert answer.content[0].text == f"Bearer {SERVICE_TOKEN}"  # type: ignore[union-attr]
            storage = provider.context.storage
            assert isinstance(storage, MemoryStorage) and storage.tokens is not None and storage.client is not None
            token = storage.tokens.access_token
            claims = jwt.decode(token, options={"verify_signature": False})
            assert claims["usr"] == user and claims["aud"] == url
            assert storage.client.token_endpoint_auth_method == "none" and storage.client.client_secret is None
            assert not any(token in line for line in env.server.authorizations())
    assert seen == {"carol": {"search_docs"}, "erin": {"search_docs", "whoami"}}
    base = env.cluster.public_url()
    assert {base + "/oauth2/authorize", base + "/login", env.idp_url + "/oauth2/authorize", REDIRECT} <= set(
        env.visited
    )

    # The token is for docs-mcp alone: docs-mcp-b, same servers and policies, refuses it.
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with httpx2.AsyncClient(verify=env.tls()) as plain:
        other = await plain.post(
            env.cluster.public_url("docs-mcp-b") + "/mcp",
            json=ping,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        )
    assert other.status_code == 401 and "resource_metadata=" in other.headers["www-authenticate"]

    log = [line for line in env.cluster.access_log()]
    assert len(env.codes) == 2
    assert all(token not in line and CLIENT_SECRET not in line for line in log)
    assert not any(code in line for code in env.codes for line in log)
    clients = env.cluster.ctl("get", "oauthclients", check=True).stdout
    assert clients.count("mcp-") == 2
