"""The authorization server for interactive MCP clients, in process behind the bare-domain app: dynamic client
registration under its policy, the authorization endpoint, and the authorization-code grant with PKCE, with
the attacker's cases (wrong verifier, reused or expired code, another redirect URI or client, no PKCE, a token
for one MCP Service used on another)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.factories import make_service, make_user
from wardgate.cluster.api.authorization import AuthorizationEndpoint
from wardgate.cluster.api.login import BrowserLogin
from wardgate.cluster.api.oauth import TokenEndpoint
from wardgate.cluster.api.site import Endpoints, SiteApp, make_site_app
from wardgate.cluster.errors import Unauthenticated
from wardgate.cluster.identity.authenticate import Authenticator
from wardgate.cluster.identity.oauth_clients import RegistrationSettings, code_name, new_code
from wardgate.cluster.identity.oidc import OidcClient
from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.identity.tokens import SigningKey, TokenService
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.resources.identity_provider import IdentityProvider
from wardgate.cluster.resources.session import SessionType
from wardgate.cluster.store import Create
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.memory import MemoryStore
from wardgate.cluster.store.propagation import LocalPropagation

DOMAIN = "wardgate.test"
BASE = f"https://{DOMAIN}"
DOCS = f"https://docs.{DOMAIN}/mcp"
OTHER = f"https://other.{DOMAIN}/mcp"
LOOPBACK = "http://127.0.0.1:33333/callback"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class As:
    http: TestClient[web.BaseRequest, None]
    cache: ResourceCache
    store: MemoryStore
    authenticator: Authenticator
    tokens: TokenService
    cookies: dict[str, str]
    log_path: Path

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    async def register(self, **body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post("/oauth2/register", json={"redirect_uris": [LOOPBACK], **body}) as r:
            return r.status, await r.json()

    async def authorize(self, user: str | None = "carol", **params: str) -> tuple[int, str, str]:
        headers = {"Cookie": f"wardgate_session={self.cookies[user]}"} if user else {}
        async with self.http.get("/oauth2/authorize", params=params, headers=headers, allow_redirects=False) as r:
            return r.status, r.headers.get("Location", ""), await r.text()

    async def token(self, **form: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post("/oauth2/token", data={"grant_type": "authorization_code", **form}) as r:
            return r.status, await r.json()

    async def code(self, client: str, verifier: str, resource: str = DOCS, user: str = "carol") -> str:
        status, location, body = await self.authorize(
            user,
            response_type="code",
            client_id=client,
            redirect_uri=LOOPBACK,
            code_challenge=s256(verifier),
            code_challenge_method="S256",
            state="st-1",
            resource=resource,
        )
        assert status == 302, body
        query = parse_qs(urlsplit(location).query)
        assert location.startswith(LOOPBACK + "?") and query["state"] == ["st-1"] and query["iss"] == [BASE]
        return query["code"][0]


Factory = Callable[[RegistrationSettings], Awaitable[As]]


@pytest.fixture
async def make_as(tmp_path: Path) -> AsyncIterator[Factory]:
    stack: list[tuple[SiteApp, AccessLog, aiohttp.ClientSession, TestClient[web.BaseRequest, None]]] = []
    followers: list[asyncio.Task[None]] = []
    tasks = asyncio.TaskGroup()

    async def build(settings: RegistrationSettings) -> As:
        store = MemoryStore()
        idp = IdentityProvider.model_validate(
            {
                "kind": "IdentityProvider",
                "metadata": {"name": "main"},
                "spec": {"issuerUrl": "https://idp.example", "clientId": "c", "clientSecret": {"fromSecret": "s"}},
            }
        )
        mcp: dict[str, Any] = {"mode": "MCP", "isPublic": True}
        await store.commit(
            [
                Create(make_user("carol", ["dev"])),
                Create(make_user("robot", type_="WORKLOAD")),
                Create(make_service("docs", **mcp)),
                Create(make_service("other", **mcp)),
                Create(make_service("plain", isPublic=True)),
                Create(idp),
            ]
        )
        cache = ResourceCache(store)
        await cache.load()
        followers.append(tasks.create_task(cache.follow()))
        propagation = LocalPropagation(cache)
        tokens = TokenService(SigningKey(ed25519.Ed25519PrivateKey.generate()), BASE)
        sessions = SessionService(store, cache, propagation)
        authenticator = Authenticator(cache, tokens)
        client = aiohttp.ClientSession()
        login = BrowserLogin(
            domain=DOMAIN,
            base_url=BASE,
            cache=cache,
            authenticator=authenticator,
            tokens=tokens,
            sessions=sessions,
            oidc=OidcClient(client),
            pending=SealedValues(os.urandom(32), "browser login"),
        )
        endpoints: list[Endpoints] = [
            TokenEndpoint(
                domain=DOMAIN,
                base_url=BASE,
                cache=cache,
                store=store,
                tokens=tokens,
                sessions=sessions,
                registration=settings,
            ),
            AuthorizationEndpoint(
                domain=DOMAIN,
                base_url=BASE,
                issuer=tokens.issuer,
                cache=cache,
                store=store,
                propagation=propagation,
                authenticator=authenticator,
                login=login,
                registration=settings,
            ),
            login,
        ]
        log_path = tmp_path / f"access-{len(stack)}.log"
        access_log = AccessLog(log_path)
        handler = await SiteApp.start(
            make_site_app(domain=DOMAIN, node="n1", access_log=access_log, endpoints=endpoints)
        )
        http: TestClient[web.BaseRequest, None] = TestClient(RawTestServer(handler))
        await http.start_server()
        stack.append((handler, access_log, client, http))
        cookies = {}
        for user in ("carol", "robot"):
            session = await sessions.open(user, SessionType.CLIENTLESS, timedelta(hours=1))
            cookies[user] = tokens.issue(session.metadata.name, user, 3600)[0]
        return As(http, cache, store, authenticator, tokens, cookies, log_path)

    async with tasks:
        try:
            yield build
        finally:
            for handler, access_log, client, http in stack:
                await http.close()
                await handler.aclose()
                await client.close()
                access_log.close()
            for follower in followers:
                follower.cancel()


OPEN = RegistrationSettings(enabled=True)


async def test_registration_is_closed_unless_the_admin_opens_it(make_as: Factory) -> None:
    closed = await make_as(RegistrationSettings())
    status, body = await closed.register()
    assert (status, body["error"]) == (403, "access_denied") and "closed" in body["error_description"]
    async with closed.http.get("/.well-known/oauth-authorization-server") as r:
        meta = await r.json()
    assert "registration_endpoint" not in meta
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_endpoint"] == BASE + "/oauth2/authorize"
    assert "authorization_code" in meta["grant_types_supported"]
    opened = await make_as(OPEN)
    async with opened.http.get("/.well-known/oauth-authorization-server") as r:
        assert (await r.json())["registration_endpoint"] == BASE + "/oauth2/register"


@pytest.mark.parametrize(
    ("settings", "uri", "allowed"),
    [
        (OPEN, "http://127.0.0.1:33333/callback", True),
        (OPEN, "http://localhost:8080/cb", True),
        (OPEN, "http://[::1]:9/cb", True),
        (OPEN, "https://app.example/cb", False),
        (OPEN, "http://localhost.evil.example:80/cb", False),
        (OPEN, "http://127.0.0.1.evil.example/cb", False),
        (OPEN, "http://127.0.0.1:5/cb#frag", False),
        (OPEN, "http://user@127.0.0.1:5/cb", False),
        (OPEN, "javascript:alert(1)", False),
        (RegistrationSettings(enabled=True, loopback=False, redirect_uris=["https://app.example/cb"]), LOOPBACK, False),
        (
            RegistrationSettings(enabled=True, loopback=False, redirect_uris=["https://app.example/cb"]),
            "https://app.example/cb",
            True,
        ),
        (
            RegistrationSettings(enabled=True, loopback=False, redirect_uris=["https://app.example/cb"]),
            "https://app.example/cb/other",
            False,
        ),
    ],
)
async def test_registration_policy_decides_the_redirect_uris(
    make_as: Factory, settings: RegistrationSettings, uri: str, allowed: bool
) -> None:
    server = await make_as(settings)
    status, body = await server.register(redirect_uris=[uri], client_name="cli")
    if allowed:
        assert status == 201, body
        assert body["redirect_uris"] == [uri] and body["token_endpoint_auth_method"] == "none"
        assert "client_secret" not in body
        stored = server.cache.get("OAuthClient", body["client_id"])
        assert stored is not None and stored.spec.redirect_uris == [uri]  # type: ignore[union-attr]
    else:
        assert (status, body["error"]) == (400, "invalid_redirect_uri"), body
        assert "redirect_uris" in body["error_description"]
        assert server.cache.list_kind("OAuthClient") == []


async def test_registration_refuses_confidential_clients_and_is_bounded(make_as: Factory) -> None:
    server = await make_as(RegistrationSettings(enabled=True, max_clients=1))
    status, body = await server.register(token_endpoint_auth_method="client_secret_basic")
    assert (status, body["error"]) == (400, "invalid_client_metadata")
    assert "token_endpoint_auth_method" in body["error_description"]
    status, body = await server.register(grant_types=["client_credentials"])
    assert (status, body["error"]) == (400, "invalid_client_metadata") and "grant_types" in body["error_description"]
    assert (await server.register())[0] == 201
    status, body = await server.register()
    assert (status, body["error"]) == (403, "access_denied") and "maximum of 1" in body["error_description"]


async def test_authorization_code_with_pkce_gives_a_token_for_that_service_only(make_as: Factory) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    verifier = secrets.token_urlsafe(48)
    code = await server.code(client, verifier)
    status, body = await server.token(client_id=client, code=code, redirect_uri=LOOPBACK, code_verifier=verifier)
    assert status == 200, body
    assert body["token_type"] == "Bearer" and 3590 <= body["expires_in"] <= 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == DOCS and claims["usr"] == "carol"
    assert server.authenticator.from_token(body["access_token"], resource=DOCS).user.metadata.name == "carol"
    for elsewhere in (OTHER, None):
        with pytest.raises(Unauthenticated, match="not for this resource"):
            server.authenticator.from_token(body["access_token"], resource=elsewhere)
    assert server.cache.list_kind("AuthorizationCode") == []
    lines = server.log_path.read_text()
    assert code not in lines and verifier not in lines and body["access_token"] not in lines
    authorize, token = [e for e in server.log() if e["event"] in ("authorize", "token")]
    assert authorize["status"] == 302 and authorize["user"] == "carol" and authorize["client"] == client
    assert token["status"] == 200 and token["client"] == client


async def test_a_code_works_once_and_only_with_its_verifier_redirect_and_client(make_as: Factory) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    other_client = (await server.register())[1]["client_id"]
    verifier = secrets.token_urlsafe(48)

    async def redeem(code: str, **overrides: str) -> tuple[int, dict[str, Any]]:
        form = {"client_id": client, "code": code, "redirect_uri": LOOPBACK, "code_verifier": verifier, **overrides}
        return await server.token(**form)

    wrong = secrets.token_urlsafe(48)
    cases: list[tuple[dict[str, str], str]] = [
        ({"code_verifier": wrong}, "code_verifier does not match"),
        ({"redirect_uri": "http://127.0.0.1:33334/callback"}, "redirect_uri is not the one"),
        ({"client_id": other_client}, "issued to another client"),
    ]
    for overrides, reason in cases:
        code = await server.code(client, verifier)
        status, body = await redeem(code, **overrides)
        assert (status, body["error"]) == (400, "invalid_grant") and reason in body["error_description"], body
        status, body = await redeem(code)  # a failed attempt used the code up: the right one fails too
        assert (status, body["error"]) == (400, "invalid_grant") and "already used" in body["error_description"]

    code = await server.code(client, verifier)
    assert (await redeem(code))[0] == 200
    status, body = await redeem(code)
    assert (status, body["error"]) == (400, "invalid_grant")

    code = await server.code(client, verifier)
    status, body = await redeem(code, resource=OTHER)
    assert (status, body["error"]) == (400, "invalid_target")

    status, body = await redeem("forged-" + secrets.token_urlsafe(32))
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await redeem(code, client_id="mcp-unregistered")
    assert (status, body["error"]) == (401, "invalid_client")
    for missing in ("code_verifier", "redirect_uri"):
        status, body = await redeem(await server.code(client, verifier), **{missing: ""})
        assert (status, body["error"]) == (400, "invalid_request") and missing in body["error_description"]


async def test_an_expired_code_is_refused(make_as: Factory) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    verifier = secrets.token_urlsafe(48)
    session = next(s for s in server.cache.list_kind("Session") if s.spec.user == "carol")  # type: ignore[union-attr]
    code, record = new_code(
        client=client,
        user="carol",
        session=session.metadata.name,
        redirect_uri=LOOPBACK,
        challenge=s256(verifier),
        resource=DOCS,
        scope="",
        now=datetime.now(UTC) - timedelta(seconds=61),
    )
    assert record.metadata.name == code_name(code) and code not in record.model_dump_json()
    await server.store.commit([Create(record)])
    status, body = await server.token(client_id=client, code=code, redirect_uri=LOOPBACK, code_verifier=verifier)
    assert (status, body["error"]) == (400, "invalid_grant") and "expired" in body["error_description"]


async def test_authorize_never_redirects_to_an_unregistered_client_or_uri(make_as: Factory) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    base = {
        "response_type": "code",
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
        "resource": DOCS,
        "state": "s",
    }
    for params in (
        {"client_id": "mcp-unregistered", "redirect_uri": LOOPBACK},
        {"client_id": client, "redirect_uri": "https://evil.example/cb"},
        {"client_id": client, "redirect_uri": LOOPBACK + "/"},
        {"client_id": client},
    ):
        status, location, body = await server.authorize(**base, **params)
        assert status == 400 and location == "" and "text/html" not in location and "evil" not in body


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"code_challenge": ""}, "invalid_request", "code_challenge is required"),
        ({"code_challenge_method": "plain"}, "invalid_request", "must be S256"),
        ({"code_challenge": "short"}, "invalid_request", "43 characters"),
        ({"response_type": "token"}, "unsupported_response_type", "response_type"),
        ({"resource": ""}, "invalid_target", "MCP Service"),
        ({"resource": f"https://plain.{DOMAIN}/mcp"}, "invalid_target", "MCP Service"),
        ({"resource": "https://docs.evil.example/mcp"}, "invalid_target", "MCP Service"),
    ],
)
async def test_authorize_errors_go_back_to_the_client_with_its_state(
    make_as: Factory, change: dict[str, str], error: str, reason: str
) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": LOOPBACK,
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
        "resource": DOCS,
        "state": "the-state",
        **change,
    }
    status, location, _ = await server.authorize(**params)
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert status == 302 and location.startswith(LOOPBACK + "?")
    assert query["error"] == error and reason in query["error_description"] and query["state"] == "the-state"
    assert "code" not in query and server.cache.list_kind("AuthorizationCode") == []


async def test_authorize_sends_a_browser_without_sign_in_to_the_login_and_refuses_workloads(
    make_as: Factory,
) -> None:
    server = await make_as(OPEN)
    client = (await server.register())[1]["client_id"]
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": LOOPBACK,
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
        "resource": DOCS,
        "state": "s",
    }
    for user in (None, "robot"):
        status, location, _ = await server.authorize(user, **params)
        assert status == 302 and location.startswith(BASE + "/login?rd=")
        rd = parse_qs(urlsplit(location).query)["rd"][0]
        assert rd.startswith(BASE + "/oauth2/authorize?") and parse_qs(urlsplit(rd).query)["client_id"] == [client]
    assert server.cache.list_kind("AuthorizationCode") == []
