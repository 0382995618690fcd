"""Browser login end to end: the real cluster process, a real third-party OIDC provider (oidc-provider-mock,
an Authlib-based Flask app, run in a thread on loopback), and an HTTP client that follows each redirect by hand
with a cookie jar, as a browser would.

The provider is wrapped in `IdpTap`, a WSGI middleware that records what the cluster sent it (to check the PKCE
verifier and the client authentication) and, for one test, adds a field to its discovery document.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit

import aiohttp
import authlib.deprecate
import jwt
import pytest
import werkzeug.serving
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs

with warnings.catch_warnings():
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    import oidc_provider_mock  # type: ignore[import-untyped]

pytestmark = [
    pytest.mark.usefixtures("loopback_names"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

CLIENT_ID = "wardgate-test"
CLIENT_SECRET = "idp-client-secret-0004"
CAROL = "carol@example.com"

StartResponse = Callable[..., Any]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    authorization: str


class IdpTap:
    """WSGI middleware: records each request to the provider; can add fields to its discovery document."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.seen: list[Seen] = []
        self.discovery_extra: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        form: dict[str, str] = {}
        if environ["REQUEST_METHOD"] == "POST" and "form" in environ.get("CONTENT_TYPE", ""):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            form = dict(parse_qsl(body.decode()))
        self.seen.append(
            Seen(
                environ["REQUEST_METHOD"],
                environ["PATH_INFO"],
                dict(parse_qsl(environ.get("QUERY_STRING", ""))),
                form,
                environ.get("HTTP_AUTHORIZATION", ""),
            )
        )
        if environ["PATH_INFO"] != "/.well-known/openid-configuration" or not self.discovery_extra:
            return self.app(environ, start_response)
        captured: list[Any] = []
        body = b"".join(self.app(environ, lambda status, headers, *exc: captured.extend([status, headers])))
        doc = {**json.loads(body), **self.discovery_extra}
        patched = json.dumps(doc).encode()
        headers = [(k, v) for k, v in captured[1] if k.lower() != "content-length"]
        start_response(captured[0], [*headers, ("Content-Length", str(len(patched)))])
        return [patched]

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/oauth2/token"]


@contextmanager
def run_idp() -> Iterator[tuple[str, IdpTap]]:
    """oidc-provider-mock on 127.0.0.1 (nonce required); yields its issuer URL and the tap."""
    tap = IdpTap(oidc_provider_mock.app(require_nonce=True))
    server = werkzeug.serving.make_server("127.0.0.1", 0, tap, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", tap
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Env:
    cluster: RunningCluster
    idp_url: str
    tap: IdpTap
    upstream: FakeOpenAI
    tmp: Path
    extra_idps: dict[str, tuple[str, IdpTap]] = field(default_factory=dict)

    def tls(self) -> ssl.SSLContext:
        return self.cluster.ssl_context()

    def service_url(self, path: str = "/v1/models") -> str:
        return self.cluster.public_url("svc") + path

    def site_url(self, path: str) -> str:
        return self.cluster.public_url() + path

    def log(self, event: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in self.cluster.access_log()]
        return [e for e in entries if event is None or e.get("event") == event]

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar())

    async def get(self, client: aiohttp.ClientSession, url: str, **kw: Any) -> Response:
        headers = {"Accept": "text/html,application/xhtml+xml", **kw.pop("headers", {})}
        tls: ssl.SSLContext | bool = self.tls() if url.startswith("https://") else True
        async with client.get(url, allow_redirects=False, ssl=tls, headers=headers, **kw) as r:
            return Response(
                r.status,
                r.headers.get("Location", ""),
                r.headers.getall("Set-Cookie", []),
                await r.text(),
                r.headers.get("Content-Type", ""),
            )

    async def set_idp_user(self, sub: str, claims: dict[str, Any], idp_url: str | None = None) -> None:
        async with (
            aiohttp.ClientSession() as client,
            client.put(f"{idp_url or self.idp_url}/users/{quote(sub, safe='')}", json=claims) as r,
        ):
            assert r.status == 204, await r.text()

    async def authorize(self, client: aiohttp.ClientSession, authorize_url: str, sub: str) -> str:
        """The mock's consent form, submitted for `sub`: returns the redirect to our callback."""
        form = await self.get(client, authorize_url)
        assert form.status == 200 and 'name="sub"' in form.body
        async with client.post(authorize_url, data={"sub": sub}, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            return r.headers["Location"]

    async def to_callback(
        self, client: aiohttp.ClientSession, sub: str = CAROL, idp: str | None = None, idp_url: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """From /login to the IdP's redirect back: the callback URL and the authorize request's parameters."""
        query = f"?idp={idp}" if idp else ""
        login = await self.get(client, self.site_url("/login" + query))
        assert login.status == 302, login.body
        assert login.location.startswith((idp_url or self.idp_url) + "/oauth2/authorize?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(login.location).query).items()}
        return await self.authorize(client, login.location, sub), params


@dataclass
class Response:
    status: int
    location: str
    set_cookies: list[str]
    body: str
    content_type: str

    def cookie(self, name: str) -> Morsel[str] | None:
        for header in self.set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            if name in jar:
                return jar[name]
        return None


def service_doc(upstream: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {
            "isPublic": True,
            "config": {"upstream": {"url": upstream}},
            "authorization": {
                "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]
            },
        },
    }


def idp_doc(name: str, issuer: str, user_claim: str = "email") -> dict[str, Any]:
    return {
        "kind": "IdentityProvider",
        "metadata": {"name": name},
        "spec": {
            "issuerUrl": issuer,
            "clientId": CLIENT_ID,
            "clientSecret": {"fromSecret": "idp-client"},
            "userClaim": user_claim,
        },
    }


def user_doc(name: str, email: str, disabled: bool = False) -> dict[str, Any]:
    return {
        "kind": "User",
        "metadata": {"name": name},
        "spec": {"type": "HUMAN", "email": email, "isDisabled": disabled},
    }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    upstream = FakeOpenAI()
    with run_idp() as (idp_url, tap):
        async with upstream.serve() as upstream_url:
            cluster = await asyncio.to_thread(start_cluster, tmp_path / "home")
            try:
                cluster.ctl("create", "secret", "idp-client", "--value", CLIENT_SECRET, check=True)
                apply_docs(
                    cluster,
                    [
                        idp_doc("main", idp_url),
                        service_doc(upstream_url),
                        user_doc("carol", CAROL),
                        user_doc("dave", "dave@example.com", disabled=True),
                    ],
                    tmp_path,
                )
                yield Env(cluster, idp_url, tap, upstream, tmp_path)
            finally:
                await asyncio.to_thread(stop_cluster, cluster)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def test_browser_login_reaches_the_service_and_logout_ends_the_session(env: Env) -> None:
    await env.set_idp_user(CAROL, {"email": CAROL, "email_verified": True, "name": "Carol"})
    async with env.browser() as browser:
        first = await env.get(browser, env.service_url("/v1/models?limit=2"))
        assert first.status == 302
        assert first.location.startswith(env.site_url("/login?rd="))
        assert parse_qs(urlsplit(first.location).query) == {"rd": [env.service_url("/v1/models?limit=2")]}

        login = await env.get(browser, first.location)
        assert login.status == 302 and login.location.startswith(env.idp_url + "/oauth2/authorize?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(login.location).query).items()}
        assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == env.site_url("/login/callback")
        assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
        assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32 and "openid" in params["scope"].split()
        binding_name = next(c.split("=")[0] for c in login.set_cookies if c.startswith("wardgate_login_"))
        binding = login.cookie(binding_name)
        assert binding is not None and binding["secure"] and binding["httponly"] and binding["samesite"] == "Lax"
        assert binding["path"] == "/login/callback" and not binding["domain"]
        assert 0 < int(binding["max-age"]) <= 600
        assert params["nonce"] not in binding.value and "v1/models" not in binding.value  # sealed, not signed

        callback_url = await env.authorize(browser, login.location, CAROL)
        assert callback_url.startswith(env.site_url("/login/callback?"))
        callback = await env.get(browser, callback_url)
        assert callback.status == 302, callback.body
        assert callback.location == env.service_url("/v1/models?limit=2")
        cookie = callback.cookie("wardgate_session")
        assert cookie is not None
        assert cookie["domain"] == "wardgate.test" and cookie["path"] == "/"
        assert cookie["secure"] is True and cookie["httponly"] is True and cookie["samesite"] == "Lax"
        assert 8 * 3600 - 60 <= int(cookie["max-age"]) <= 8 * 3600
        token = cookie.value

        (exchange,) = env.tap.token_requests()
        assert exchange.form["grant_type"] == "authorization_code"
        assert s256(exchange.form["code_verifier"]) == params["code_challenge"]
        assert exchange.form["redirect_uri"] == params["redirect_uri"]
        basic = base64.b64decode(exchange.authorization.removeprefix("Basic ")).decode()
        assert basic == f"{CLIENT_ID}:{CLIENT_SECRET}"

        served = await env.get(browser, callback.location)
        assert served.status == 200, served.body
        seen = env.upstream.requests[-1]
        assert seen.path == "/v1/models" and "wardgate_session" not in seen.headers.get("Cookie", "")
        assert token not in json.dumps(dict(seen.headers))

        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["usr"] == "carol"
        session = env.cluster.ctl("get", "session", claims["sub"], "-o", "json", check=True).stdout
        assert json.loads(session)["spec"]["type"] == "CLIENTLESS"

        home = await env.get(browser, env.site_url("/"))
        assert home.status == 200 and "signed in as carol" in home.body

        logout = await env.get(browser, env.site_url("/logout"))
        assert logout.status == 200 and "text/html" in logout.content_type
        cleared = logout.cookie("wardgate_session")
        assert cleared is not None and cleared.value == "" and cleared["max-age"] == "0"
        assert cleared["domain"] == "wardgate.test"

    async with aiohttp.ClientSession() as stale:
        replay = {"Cookie": f"wardgate_session={token}"}
        html = await env.get(stale, env.service_url(), headers=replay)
        assert html.status == 302 and html.location.startswith(env.site_url("/login?rd="))
        async with stale.get(env.service_url(), headers=replay, ssl=env.tls()) as api:
            assert api.status == 401
    assert len(env.upstream.requests) == 1
    assert claims["sub"] not in env.cluster.ctl("get", "sessions", check=True).stdout

    (login_entry,) = env.log("login")
    (callback_entry,) = env.log("callback")
    (logout_entry,) = env.log("logout")
    assert login_entry["status"] == 302 and login_entry["idp"] == "main"
    assert callback_entry["status"] == 302 and callback_entry["user"] == "carol"
    assert callback_entry["session"] == claims["sub"] and callback_entry["idpClaim"] == f"email={CAROL}"
    assert logout_entry["status"] == 200 and logout_entry["session"] == claims["sub"]
    refused = [e for e in env.log() if e.get("service") == "svc" and e["status"] == 401]
    assert refused[-1]["reason"].startswith("session") and "revoked" in refused[-1]["reason"]
    assert all(token not in line and CLIENT_SECRET not in line for line in env.cluster.access_log())


async def test_replayed_callback_is_refused(env: Env) -> None:
    async with env.browser() as browser:
        callback_url, _ = await env.to_callback(browser)
        assert (await env.get(browser, callback_url)).status == 302
        again = await env.get(browser, callback_url)
    assert again.status == 400 and "text/html" in again.content_type
    assert again.cookie("wardgate_session") is None
    entry = env.log("callback")[-1]
    assert entry["status"] == 400 and entry["reason"].startswith("no login cookie for this state")
    assert len(env.tap.token_requests()) == 1


async def test_a_forged_or_altered_login_cookie_is_refused(env: Env) -> None:
    async with env.browser() as browser:
        callback_url, params = await env.to_callback(browser)
        name = next(c.key for c in browser.cookie_jar if c.key.startswith("wardgate_login_"))
        value = next(c.value for c in browser.cookie_jar if c.key == name)
        headers = {"Cookie": f"{name}={value[:-3]}{'AAA' if value[-3:] != 'AAA' else 'BBB'}"}
        async with env.browser() as attacker:
            altered = await env.get(attacker, callback_url, headers=headers)
            forged = await env.get(attacker, callback_url, headers={"Cookie": f"{name}=forged-by-hand"})
        # the genuine cookie still finishes the login it belongs to
        assert (await env.get(browser, callback_url)).status == 302
    for refused in (altered, forged):
        assert (
            refused.status == 400 and "text/html" in refused.content_type and refused.cookie("wardgate_session") is None
        )
        cleared = refused.cookie(name)
        assert cleared is not None and cleared.value == "" and cleared["path"] == "/login/callback"
    reasons = [e["reason"] for e in env.log("callback")[:2]]
    assert reasons[0] == "login cookie refused: sealed value forged, altered, or sealed for something else"
    assert reasons[1].startswith("login cookie refused: sealed value malformed")
    assert len(env.tap.token_requests()) == 1 and params["state"] not in "".join(reasons)


async def test_replayed_code_in_a_new_login_is_refused_by_the_idp(env: Env) -> None:
    async with env.browser() as browser:
        first_url, _ = await env.to_callback(browser)
        assert (await env.get(browser, first_url)).status == 302
        old_code = parse_qs(urlsplit(first_url).query)["code"][0]
        second_url, params = await env.to_callback(browser)
        assert parse_qs(urlsplit(second_url).query)["code"][0] != old_code
        spliced = env.site_url(f"/login/callback?code={quote(old_code)}&state={quote(params['state'])}")
        refused = await env.get(browser, spliced)
    assert refused.status == 400 and refused.cookie("wardgate_session") is None
    entry = env.log("callback")[-1]
    assert entry["status"] == 400 and "IdP token endpoint refused the code" in entry["reason"]
    assert "invalid_grant" in entry["reason"]


async def test_code_injected_into_another_login_is_refused(env: Env) -> None:
    async with env.browser() as browser:
        victim_url, _ = await env.to_callback(browser)
        victim_code = parse_qs(urlsplit(victim_url).query)["code"][0]
        _, params = await env.to_callback(browser)
        injected = await env.get(
            browser, env.site_url(f"/login/callback?code={quote(victim_code)}&state={quote(params['state'])}")
        )
    assert injected.status == 400 and injected.cookie("wardgate_session") is None
    (exchange,) = env.tap.token_requests()
    assert exchange.form["code"] == victim_code and s256(exchange.form["code_verifier"]) == params["code_challenge"]
    entry = env.log("callback")[-1]
    assert entry["status"] == 400 and entry["reason"].startswith("ID token nonce does not match the login")


async def test_forged_or_foreign_state_is_refused(env: Env) -> None:
    async with env.browser() as browser:
        forged = await env.get(browser, env.site_url("/login/callback?state=forged-state&code=abc"))
        missing = await env.get(browser, env.site_url("/login/callback?code=abc"))
        callback_url, _ = await env.to_callback(browser)
    async with env.browser() as other_browser:
        stolen = await env.get(other_browser, callback_url)
    assert forged.status == missing.status == stolen.status == 400
    assert stolen.cookie("wardgate_session") is None
    reasons = [e["reason"] for e in env.log("callback")]
    assert reasons[0].startswith("no login cookie for this state (forged state")
    assert reasons[1] == "callback without state"
    assert reasons[2].startswith("no login cookie for this state")
    assert not env.tap.token_requests()


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "https://wardgate.test.evil.example/",
        "http://svc.wardgate.test/",
        "//evil.example/x",
        "https://evil.example\\@svc.wardgate.test/",
        "javascript:alert(1)",
        "https://user@evil.example/",
        "/relative",
    ],
)
async def test_return_url_outside_the_domain_is_not_followed(env: Env, rd: str) -> None:
    async with env.browser() as browser:
        refused = await env.get(browser, env.site_url("/login?rd=" + quote(rd, safe="")))
    assert refused.status == 400 and not refused.location
    entry = env.log("login")[-1]
    assert entry["status"] == 400 and entry["reason"].startswith("rd refused")
    assert not any(s.path == "/oauth2/authorize" for s in env.tap.seen)


async def test_idp_user_without_a_matching_user_is_forbidden(env: Env) -> None:
    async with env.browser() as browser:
        unknown_url, _ = await env.to_callback(browser, sub="mallory@example.com")
        unknown = await env.get(browser, unknown_url)
        disabled_url, _ = await env.to_callback(browser, sub="dave@example.com")
        disabled = await env.get(browser, disabled_url)
        await env.set_idp_user("erin", {"email": CAROL, "email_verified": False})
        unverified_url, _ = await env.to_callback(browser, sub="erin")
        unverified = await env.get(browser, unverified_url)
    for page in (unknown, disabled, unverified):
        assert page.status == 403 and "text/html" in page.content_type
        assert page.cookie("wardgate_session") is None
    reasons = [e["reason"] for e in env.log("callback")]
    assert reasons == [
        "no User has email 'mallory@example.com'",
        "user 'dave' is disabled",
        f"IdP says the email {CAROL!r} is not verified",
    ]
    assert "no User" not in unknown.body
    sessions = env.cluster.ctl("get", "sessions", check=True).stdout
    assert "dave" not in sessions and "carol" not in sessions


def _foreign_tokens(env: Env, real: str) -> list[str]:
    claims = jwt.decode(real, options={"verify_signature": False})
    other_cluster_key = ed25519.Ed25519PrivateKey.generate()
    kid = jwt.get_unverified_header(real)["kid"]
    return [
        jwt.encode(claims, other_cluster_key, algorithm="EdDSA", headers={"kid": "another-cluster"}),
        jwt.encode(claims, other_cluster_key, algorithm="EdDSA", headers={"kid": kid}),
        jwt.encode(
            {**claims, "iss": "https://other.test", "aud": "https://other.test"},
            other_cluster_key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
    ]


async def test_cookie_from_another_cluster_is_refused(env: Env) -> None:
    async with env.browser() as browser:
        callback_url, _ = await env.to_callback(browser)
        callback = await env.get(browser, callback_url)
        cookie = callback.cookie("wardgate_session")
        assert cookie is not None
    for forged in _foreign_tokens(env, cookie.value):
        async with aiohttp.ClientSession() as client:
            headers = {"Cookie": f"wardgate_session={forged}"}
            html = await env.get(client, env.service_url(), headers=headers)
            assert html.status == 302 and html.location.startswith(env.site_url("/login?rd="))
            async with client.get(env.service_url(), headers=headers, ssl=env.tls()) as api:
                assert api.status == 401
            logout = await env.get(client, env.site_url("/logout"), headers=headers)
            assert logout.status == 200
    assert not env.upstream.requests
    reasons = [e["reason"] for e in env.log() if e.get("service") == "svc"]
    assert len(reasons) == 6 and all("signed by an unknown key" in r or "invalid token" in r for r in reasons)
    logouts = env.log("logout")
    assert len(logouts) == 3 and all(e["reason"].startswith("cookie refused, nothing ended") for e in logouts)
    session = jwt.decode(cookie.value, options={"verify_signature": False})["sub"]
    assert session in env.cluster.ctl("get", "sessions", check=True).stdout
    async with (
        aiohttp.ClientSession() as client,
        client.get(env.service_url(), headers={"Cookie": f"wardgate_session={cookie.value}"}, ssl=env.tls()) as r,
    ):
        assert r.status == 200


async def test_idp_without_pkce_s256_is_refused_and_several_idps_offer_a_choice(env: Env) -> None:
    with run_idp() as (weak_url, weak_tap):
        weak_tap.discovery_extra = {"code_challenge_methods_supported": ["plain"]}
        apply_docs(env.cluster, [idp_doc("weak", weak_url)], env.tmp)
        async with env.browser() as browser:
            choice = await env.get(browser, env.site_url("/login?rd=" + quote(env.service_url(), safe="")))
            refused = await env.get(browser, env.site_url("/login?idp=weak"))
            unknown = await env.get(browser, env.site_url("/login?idp=nope"))
            callback_url, _ = await env.to_callback(browser, idp="main")
            assert (await env.get(browser, callback_url)).status == 302
    assert choice.status == 200 and "idp=main" in choice.body and "idp=weak" in choice.body
    assert refused.status == 502 and not refused.location
    assert unknown.status == 404 and "application/json" in unknown.content_type
    entries = env.log("login")
    assert entries[1]["reason"].startswith("IdP does not support PKCE S256")
    assert entries[2]["reason"] == "no IdentityProvider 'nope'"
    assert not any(s.path == "/oauth2/authorize" for s in weak_tap.seen)


async def test_a_configured_claim_maps_to_the_user_name(env: Env) -> None:
    env.cluster.ctl("delete", "identityprovider", "main", check=True)
    apply_docs(env.cluster, [idp_doc("by-name", env.idp_url, user_claim="wardgate_user")], env.tmp)
    await env.set_idp_user("carol-at-idp", {"wardgate_user": "carol", "email": "someone-else@example.com"})
    async with env.browser() as browser:
        callback_url, _ = await env.to_callback(browser, sub="carol-at-idp")
        callback = await env.get(browser, callback_url)
        assert callback.status == 302 and callback.location == env.site_url("/")
        assert (await env.get(browser, env.service_url())).status == 200
    entry = env.log("callback")[-1]
    assert entry["user"] == "carol" and entry["idpClaim"] == "wardgate_user=carol" and entry["idp"] == "by-name"


async def test_without_an_identity_provider_browsers_get_401_and_login_404(env: Env) -> None:
    env.cluster.ctl("delete", "identityprovider", "main", check=True)
    deadline = time.monotonic() + 5
    async with env.browser() as browser:
        while True:
            page = await env.get(browser, env.service_url())
            if page.status != 302 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        login = await env.get(browser, env.site_url("/login"))
    assert page.status == 401
    assert login.status == 404 and json.loads(login.body)["error"] == "not_found"
    assert env.log("login")[-1]["reason"] == "no IdentityProvider is configured"
