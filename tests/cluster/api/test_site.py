"""The bare-domain app behind a low-level server (as the public listener serves it): routing, RFC 6749 errors,
one access-log line per request, and the token endpoint's session cap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.factories import make_user
from wardgate.cluster.api.oauth import TokenEndpoint
from wardgate.cluster.api.site import SiteApp, make_site_app
from wardgate.cluster.api.site_log import DOMAIN as APP_DOMAIN
from wardgate.cluster.api.site_log import route
from wardgate.cluster.errors import Unauthenticated
from wardgate.cluster.identity import credentials
from wardgate.cluster.identity.authenticate import Authenticator
from wardgate.cluster.identity.oauth_clients import RegistrationSettings
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.identity.tokens import SigningKey, TokenService
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store import Create
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.propagation import LocalPropagation

DOMAIN = "wardgate.test"


class Probe:
    """Endpoints of the test: what the app hands a handler, and a handler that fails unexpectedly."""

    def routes(self) -> list[web.RouteDef]:
        return [route("GET", "/probe", "probe", self._probe), route("GET", "/boom", "boom", self._boom)]

    async def _probe(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        entry["user"] = "probe-user"
        return web.json_response({"route": request.match_info.route.name, "domain": request.app[APP_DOMAIN]})

    async def _boom(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        raise RuntimeError("a bug")


@dataclass
class Site:
    http: TestClient[web.BaseRequest, None]
    log_path: Path
    cache: ResourceCache
    authenticator: Authenticator
    secret: str

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    async def token(self, secret: str | None = None, **extra: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        form = {"grant_type": "client_credentials", "client_id": "ci", "client_secret": secret or self.secret, **extra}
        async with self.http.post("/oauth2/token", data=form) as response:
            return response.status, dict(response.headers), await response.json()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    secret, digest, prefix = credentials.generate("ci")
    ci = Credential.model_validate(
        {
            "kind": "Credential",
            "metadata": {"name": "ci"},
            "spec": {"type": "OAUTH2", "user": "alice"},
            "status": {"tokenSha256": digest, "tokenPrefix": prefix},
        }
    )
    store = MemoryStore()
    await store.commit([Create(make_user("alice")), Create(ci)])
    cache = ResourceCache(store)
    await cache.load()
    tokens = TokenService(SigningKey(ed25519.Ed25519PrivateKey.generate()), f"https://{DOMAIN}")
    sessions = SessionService(store, cache, LocalPropagation(cache), default_cap=3)
    token = TokenEndpoint(
        domain=DOMAIN,
        base_url=f"https://{DOMAIN}",
        cache=cache,
        store=store,
        tokens=tokens,
        sessions=sessions,
        registration=RegistrationSettings(),
    )
    access_log = AccessLog(tmp_path / "access.log")
    app = make_site_app(domain=DOMAIN, node="n1", access_log=access_log, endpoints=[token, Probe()])
    handler = await SiteApp.start(app)
    async with asyncio.TaskGroup() as tasks:
        follower = tasks.create_task(cache.follow())
        client: TestClient[web.BaseRequest, None] = TestClient(RawTestServer(handler))
        async with client as http:
            yield Site(http, tmp_path / "access.log", cache, Authenticator(cache, tokens), secret)
        follower.cancel()
    await handler.aclose()
    access_log.close()


async def test_a_failed_client_authentication_is_rfc6749_with_basic_challenge(site: Site) -> None:
    status, headers, body = await site.token(secret="wgt.ci." + "a" * 43)
    assert status == 401
    assert body == {"error": "invalid_client", "error_description": "client authentication failed"}
    assert headers["WWW-Authenticate"] == f'Basic realm="{DOMAIN}"'
    assert headers["Cache-Control"] == "no-store"
    (entry,) = site.log()
    assert entry["event"] == "token" and entry["status"] == 401 and entry["reason"] == "token does not match"
    assert entry["credential"] == "ci" and entry["host"] == DOMAIN and entry["node"] == "n1"


async def test_grant_and_method_errors_keep_the_oauth2_dialect(site: Site) -> None:
    status, headers, body = await site.token(grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type") and "WWW-Authenticate" not in headers
    async with site.http.get("/oauth2/token") as response:
        assert response.status == 405 and response.headers["Allow"] == "POST"
        assert await response.json() == {"error": "invalid_request", "error_description": "use POST"}
    async with site.http.get("/nowhere") as response:
        assert response.status == 404
        assert await response.json() == {"error": "not_found", "error_description": "no endpoint /nowhere"}
    assert [(e.get("event"), e["status"]) for e in site.log()] == [("token", 400), (None, 405), (None, 404)]


async def test_each_request_writes_one_line_and_handlers_get_the_apps_request(site: Site) -> None:
    async with site.http.get("/probe") as probe, site.http.get("/.well-known/openid-configuration") as meta:
        assert await probe.json() == {"route": "probe", "domain": DOMAIN}
        assert (await meta.json())["token_endpoint"] == f"https://{DOMAIN}/oauth2/token"
    async with site.http.get("/oauth2/jwks") as jwks, site.http.get("/healthz") as health:
        assert (await jwks.json())["keys"][0]["alg"] == "EdDSA" and health.status == 200
    async with site.http.get("/boom") as boom:
        assert boom.status == 500 and (await boom.json())["error"] == "server_error"
    entries = site.log()
    assert [e["event"] for e in entries] == ["probe", "discovery", "jwks", "healthz", "boom"]
    assert entries[0]["user"] == "probe-user" and entries[-1]["reason"] == "internal error"
    assert all(e["durationMs"] >= 0 and e["listener"] == "public" for e in entries)


async def test_minting_beyond_the_cap_evicts_the_oldest_session(site: Site) -> None:
    grants = [await site.token() for _ in range(5)]
    assert all(status == 200 for status, _, _ in grants)
    live = [s for s in site.cache.list_kind("Session") if isinstance(s, Session)]
    assert len(live) == 3 and all(s.spec.credential == "ci" for s in live)
    for _, _, body in grants[:2]:
        with pytest.raises(Unauthenticated):
            site.authenticator.from_token(body["access_token"])
    for _, _, body in grants[2:]:
        assert site.authenticator.from_token(body["access_token"]).user.metadata.name == "alice"
