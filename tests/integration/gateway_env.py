"""A running gateway for integration tests: the real cluster process, fake providers, users and tokens."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tests.conftest import REPO, RunningCluster
from tests.fakes.openai_provider import FakeOpenAI

GEMINI_KEY = "gemini-secret-AIza-0001"
OPENAI_KEY = "openai-secret-sk-0002"
DEEPSEEK_KEY = "deepseek-secret-0003"


@dataclass
class Gateway:
    cluster: RunningCluster
    fakes: dict[str, tuple[FakeOpenAI, str]]
    client_secrets: dict[str, str] = field(default_factory=dict)
    sdk_clients: list[Any] = field(default_factory=list)

    @property
    def ca(self) -> str:
        return str(self.cluster.home / "ca.crt")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def base_url(self, service: str) -> str:
        return self.cluster.public_url(service) + "/v1"

    def token_url(self) -> str:
        return self.cluster.public_url() + "/oauth2/token"

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cluster.access_log()]

    async def log_entries(self, count: int, **match: Any) -> list[dict[str, Any]]:
        """At least `count` access-log entries with these fields, waiting briefly for the last lines."""
        found: list[dict[str, Any]] = []
        for _ in range(100):
            found = [e for e in self.access_log() if all(e.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"{len(found)} access-log entries with {match}, expected {count}")

    async def last_log(self, **match: Any) -> dict[str, Any]:
        """The newest access-log entry with these fields (the line lands just after the response)."""
        for _ in range(100):
            found = [e for e in self.access_log() if all(e.get(k) == v for k, v in match.items())]
            if found:
                return found[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no access-log entry with {match}")


def pointed_at_fakes(fakes: dict[str, str]) -> list[dict[str, Any]]:
    """The example manifests with every provider URL replaced by a fake's."""
    replace = {
        "https://generativelanguage.googleapis.com": fakes["gemini"],
        "https://api.openai.com": fakes["openai"],
        "https://api.deepseek.com": fakes["deepseek"],
    }
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "configs" / "resources").glob("*.yaml")):
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def apply_docs(cluster: RunningCluster, docs: list[dict[str, Any]], tmp: Path) -> None:
    path = tmp / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cluster.ctl("apply", "-f", str(path), check=True)


def create_credential(cluster: RunningCluster, name: str, user: str, kind: str, *extra: str) -> str:
    out = cluster.ctl("create", "credential", name, "--user", user, "--type", kind, *extra, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("token", "client_secret"):
            return value.strip()
    raise AssertionError(out)


async def fetch_token(gw: Gateway, client: str, secret: str, method: str = "client_secret_post") -> str:
    async with AsyncOAuth2Client(
        client_id=client, client_secret=secret, token_endpoint_auth_method=method, verify=gw.ssl_context()
    ) as oauth:
        token = await oauth.fetch_token(gw.token_url(), grant_type="client_credentials")
    return str(token["access_token"])


def sdk(gw: Gateway, service: str, key: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(
        base_url=gw.base_url(service),
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=gw.ssl_context()),
    )
    gw.sdk_clients.append(client)
    return client


async def raw(gw: Gateway, method: str, service: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.cluster.public_url(service) + path, ssl=gw.ssl_context(), **kw) as r,
    ):
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def client_credentials_token(cluster: RunningCluster, credential: str, user: str) -> tuple[str, str]:
    """Create an OAuth2 credential for `user` through the admin API, exchange it for an access token, and return
    the token and its Session's name (the user must have no other Session)."""
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    admin = {"Authorization": f"Bearer {cluster.token}"}
    async with aiohttp.ClientSession() as session:
        body = {"name": credential, "user": user, "type": "oauth2"}
        async with session.post(cluster.url + "/api/v1/credentials", json=body, headers=admin, ssl=context) as r:
            created = await r.json()
        form = {
            "grant_type": "client_credentials",
            "client_id": created["clientId"],
            "client_secret": created["clientSecret"],
        }
        async with session.post(cluster.public_url() + "/oauth2/token", data=form, ssl=context) as r:
            token: str = (await r.json())["access_token"]
        async with session.get(cluster.url + "/api/v1/sessions", headers=admin, ssl=context) as r:
            (name,) = [s["metadata"]["name"] for s in (await r.json())["items"] if s["spec"]["user"] == user]
    return token, name
