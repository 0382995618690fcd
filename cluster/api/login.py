"""Human browser login through an OIDC IdentityProvider, on `https://<domain>`.

    GET /login[?rd=&idp=] ─▶ the IdentityProvider ─▶ its discovery document (cached)
        ─▶ a pending login in memory {state: verifier, nonce, rd, idp, binding} (10 min, single use)
        ─▶ 302 to the authorization endpoint (code flow, PKCE S256, state, nonce)
           + a binding cookie, so that only the browser that started the login can finish it
    GET /login/callback?code=&state= ─▶ take the pending login (once) ─▶ binding cookie matches
        ─▶ token endpoint (code, PKCE verifier, client secret from the referenced Secret)
        ─▶ ID token: signature (the IdP's JWKS), iss, aud, exp, nonce ─▶ claim `userClaim` ─▶ User
        ─▶ Session (CLIENTLESS) in the store ─▶ the cache has it
        ─▶ cookie `wardgate_session` for `<domain>` and its subdomains ─▶ 302 to rd
    GET|POST /logout ─▶ the Session named by the cookie's token is deleted ─▶ cookie cleared

Every request writes one access-log line; a refusal carries its reason there, and the browser gets a plain
page without it. The IdP is spoken to with the caller's aiohttp session; compressed answers are not asked for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import jwt
import orjson
from aiohttp import web

from cluster.api.apex_log import logged
from cluster.errors import NotFound, Unauthenticated
from cluster.identity.authenticate import SESSION_COOKIE, Authenticator
from cluster.identity.tokens import TokenService
from cluster.observability.accesslog import AccessLog
from cluster.resources.credential import Secret
from cluster.resources.identity_provider import IdentityProvider
from cluster.resources.session import Session, SessionType
from cluster.resources.user import User, UserType
from cluster.store import Create, Delete, Store
from cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

ApexRoute = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

SESSION_TTL = timedelta(hours=8)
PENDING_TTL_SECONDS = 600.0
MAX_PENDING = 10_000
DISCOVERY_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0
JWKS_REFRESH_INTERVAL_SECONDS = 30.0
ID_TOKEN_LEEWAY_SECONDS = 60
IDP_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_IDP_RESPONSE_BYTES = 1 << 20
MAX_RD_LENGTH = 2048
BINDING_COOKIE_PREFIX = "wardgate_login_"
CALLBACK_PATH = "/login/callback"
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric algorithms only: `none` and the HMAC family (keyed by the client secret) are refused."""


class LoginRefused(Exception):
    """A refused login step: `status`, the `reason` for the access log, and the `message` the browser sees."""

    def __init__(self, status: int, reason: str, message: str = "", *, as_json: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.as_json = status, reason, as_json
        self.message = message or {
            400: "This sign-in link is invalid or was already used. Start again from the page you wanted.",
            403: "You are not allowed to sign in here.",
            404: "Not found.",
            502: "The identity provider did not answer as expected. Try again later.",
            503: "Sign-in is not available right now. Try again later.",
        }.get(status, "Sign-in failed.")
        self.clear_cookies: list[str] = []

    def response(self) -> web.Response:
        if self.as_json:
            error = "not_found" if self.status == 404 else "unavailable"
            body = orjson.dumps({"error": error, "error_description": self.message})
            response = web.Response(status=self.status, body=body, content_type="application/json")
            response.headers["Cache-Control"] = "no-store"
        else:
            response = _page(self.status, "Sign-in failed" if self.status != 404 else "Not found", self.message)
        for name in self.clear_cookies:
            response.del_cookie(name, path=CALLBACK_PATH, secure=True, httponly=True, samesite="Lax")
        return response


def _page(status: int, title: str, message: str, links: list[tuple[str, str]] | None = None) -> web.Response:
    items = "".join(f'<li><a href="{escape(href)}">{escape(text)}</a></li>' for href, text in links or [])
    body = (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title></head>'
        f"<body><h1>{escape(title)}</h1><p>{escape(message)}</p>{f'<ul>{items}</ul>' if items else ''}"
        "</body></html>\n"
    )
    response = web.Response(status=status, text=body, content_type="text/html")
    response.headers.update(
        {
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
    )
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier))."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _pick_key(keys: list[dict[str, Any]], kid: str | None, alg: str) -> jwt.PyJWK | None:
    usable = [k for k in keys if k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
    candidates = usable if kid is None else [k for k in usable if k.get("kid") == kid]
    if len(candidates) != 1:
        return None
    try:
        return jwt.PyJWK(candidates[0], algorithm=alg)
    except jwt.PyJWTError as exc:
        raise LoginRefused(502, f"IdP key {kid!r} is unusable for {alg} ({exc})") from None


def _binding_cookie(state: str) -> str:
    return BINDING_COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@dataclass(frozen=True, slots=True)
class Pending:
    """A login between /login and its callback."""

    verifier: str
    nonce: str
    rd: str
    idp: str
    binding: str
    created: float


@dataclass(frozen=True, slots=True)
class Provider:
    """What the IdP's discovery document says, as far as this login needs it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]
    iss_parameter: bool
    fetched: float


@dataclass(slots=True)
class _Keys:
    keys: list[dict[str, Any]]
    fetched: float


class BrowserLogin:
    """The browser login endpoints; `register` puts them into `ApexEndpoints.extra_routes`."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        store: Store,
        cache: ResourceCache,
        tokens: TokenService,
        access_log: AccessLog,
        client: aiohttp.ClientSession,
        node: str = "",
        session_ttl: timedelta = SESSION_TTL,
        pending_ttl: float = PENDING_TTL_SECONDS,
    ) -> None:
        self._domain = domain.lower().rstrip(".")
        self._base = base_url.rstrip("/")
        self._store = store
        self._cache = cache
        self._tokens = tokens
        self._auth = Authenticator(cache, tokens)
        self._log = access_log
        self._client = client
        self._node = node
        self._session_ttl = session_ttl
        self._pending_ttl = pending_ttl
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._used: OrderedDict[str, float] = OrderedDict()
        self._providers: dict[str, Provider] = {}
        self._keys: dict[str, _Keys] = {}

    @property
    def redirect_uri(self) -> str:
        return self._base + CALLBACK_PATH

    def register(self, routes: MutableMapping[tuple[str, str], ApexRoute]) -> None:
        routes[("GET", "/login")] = self.login
        routes[("GET", CALLBACK_PATH)] = self.callback
        routes[("GET", "/logout")] = self.logout
        routes[("POST", "/logout")] = self.logout
        routes.setdefault(("GET", "/"), self.home)

    def login_url(self) -> str | None:
        """Where the gateway sends browsers without a session; None while no IdentityProvider exists."""
        return f"{self._base}/login" if self._cache.list_kind("IdentityProvider") else None

    async def _logged(
        self,
        request: web.BaseRequest,
        event: str,
        step: Callable[[web.BaseRequest, dict[str, Any]], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        def refusal(exc: Exception) -> web.StreamResponse | None:
            return exc.response() if isinstance(exc, LoginRefused) else None

        return await logged(self._log, self._node, self._domain, event, request, step, refusal)

    async def login(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._logged(request, "login", self._login)

    async def callback(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._logged(request, "callback", self._callback)

    async def logout(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._logged(request, "logout", self._logout)

    async def home(self, request: web.BaseRequest) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                identity = self._auth.from_token(cookie)
            except Unauthenticated:
                pass
            else:
                return _page(
                    200, "Signed in", f"You are signed in as {identity.user.metadata.name}.", [("/logout", "Sign out")]
                )
        links = [("/login", "Sign in")] if self.login_url() else []
        return _page(200, "Not signed in", "You are not signed in.", links)

    def _identity_provider(self, name: str | None) -> IdentityProvider | None:
        """The named IdentityProvider, or the only one; None when a choice is needed."""
        if name:
            found = self._cache.get("IdentityProvider", name)
            if not isinstance(found, IdentityProvider):
                raise LoginRefused(
                    404, f"no IdentityProvider {name[:63]!r}", "No such identity provider.", as_json=True
                )
            return found
        providers = [p for p in self._cache.list_kind("IdentityProvider") if isinstance(p, IdentityProvider)]
        if not providers:
            raise LoginRefused(
                404, "no IdentityProvider is configured", "Browser sign-in is not configured.", as_json=True
            )
        return providers[0] if len(providers) == 1 else None

    def _return_to(self, rd: str | None) -> str:
        """The return URL after login: https, on the domain or one of its subdomains, else refused."""
        if not rd:
            return self._base + "/"
        if len(rd) > MAX_RD_LENGTH or any(c in rd for c in "\\\r\n\t\0 ") or not rd.isprintable():
            raise LoginRefused(400, "rd refused: malformed", "The return address is not allowed.")
        try:
            parts = urlsplit(rd)
            parts.port  # noqa: B018  (a bad port raises ValueError)
        except ValueError:
            raise LoginRefused(400, "rd refused: malformed", "The return address is not allowed.") from None
        host = (parts.hostname or "").rstrip(".")
        if parts.scheme != "https" or parts.username is not None or parts.password is not None or not host:
            raise LoginRefused(
                400,
                f"rd refused: {parts.scheme or 'relative'} URL on {host or 'no host'}",
                "The return address is not allowed.",
            )
        if host != self._domain and not host.endswith("." + self._domain):
            raise LoginRefused(
                400, f"rd refused: host {host[:253]!r} is outside {self._domain}", "The return address is not allowed."
            )
        return rd

    def _remember(self, state: str, pending: Pending) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.created <= self._pending_ttl and len(self._pending) < MAX_PENDING:
                break
            self._pending.popitem(last=False)
        self._pending[state] = pending

    def _take(self, state: str) -> Pending:
        """The pending login of `state`, removed: a state works once."""
        now = time.monotonic()
        while self._used and next(iter(self._used.values())) < now:
            self._used.popitem(last=False)
        key = hashlib.sha256(state.encode()).hexdigest()
        pending = self._pending.pop(state, None)
        if pending is None:
            if key in self._used:
                raise LoginRefused(400, "state already used (replayed callback)")
            raise LoginRefused(400, "unknown state (forged, or from a login that expired or another node)")
        self._used[key] = now + self._pending_ttl
        if len(self._used) > MAX_PENDING:
            self._used.popitem(last=False)
        if now - pending.created > self._pending_ttl:
            raise LoginRefused(400, "login expired before the callback")
        return pending

    async def _login(self, request: web.BaseRequest, entry: dict[str, Any]) -> web.StreamResponse:
        rd = self._return_to(request.query.get("rd"))
        idp = self._identity_provider(request.query.get("idp"))
        if idp is None:
            names = [p for p in self._cache.list_kind("IdentityProvider") if isinstance(p, IdentityProvider)]
            entry["note"] = "several IdentityProviders: showed the choice"
            links = [
                (f"/login?{urlencode({'idp': p.metadata.name, 'rd': rd})}", p.spec.display_name or p.metadata.name)
                for p in names
            ]
            return _page(200, "Sign in", "Choose how to sign in.", links)
        entry["idp"] = idp.metadata.name
        provider = await self._provider(idp)
        state, nonce, binding = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        self._remember(state, Pending(verifier, nonce, rd, idp.metadata.name, binding, time.monotonic()))
        location = _with_query(
            provider.authorization_endpoint,
            {
                "response_type": "code",
                "client_id": idp.spec.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(dict.fromkeys(["openid", *idp.spec.scopes])),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            },
        )
        response = _redirect(location)
        response.set_cookie(
            _binding_cookie(state),
            binding,
            path=CALLBACK_PATH,
            secure=True,
            httponly=True,
            samesite="Lax",
            max_age=int(self._pending_ttl),
        )
        return response

    async def _callback(self, request: web.BaseRequest, entry: dict[str, Any]) -> web.StreamResponse:
        query = request.query
        for name in ("state", "code", "iss", "error"):
            if len(query.getall(name, [])) > 1:
                raise LoginRefused(400, f"parameter {name!r} given more than once")
        state = query.get("state", "")
        if not state:
            raise LoginRefused(400, "callback without state")
        cookie_name = _binding_cookie(state)
        try:
            pending = self._take(state)
            entry["idp"] = pending.idp
            binding = request.cookies.get(cookie_name, "")
            if not hmac.compare_digest(binding.encode(), pending.binding.encode()):
                raise LoginRefused(400, "login was not started in this browser (binding cookie missing or wrong)")
            if "error" in query:
                error = query["error"][:64]
                detail = query.get("error_description", "")[:200]
                status = 403 if error == "access_denied" else 502
                raise LoginRefused(
                    status, f"IdP answered error {error!r}: {detail}", "The identity provider did not sign you in."
                )
            code = query.get("code", "")
            if not code:
                raise LoginRefused(400, "callback without code")
            idp = self._cache.get("IdentityProvider", pending.idp)
            if not isinstance(idp, IdentityProvider):
                raise LoginRefused(503, f"IdentityProvider {pending.idp!r} was deleted during the login")
            provider = await self._provider(idp)
            iss = query.get("iss")
            if iss is not None and iss != provider.issuer:
                raise LoginRefused(400, f"iss {iss[:200]!r} in the callback is not the IdP's issuer (mix-up)")
            if iss is None and provider.iss_parameter:
                raise LoginRefused(400, "callback without iss although the IdP sends it (mix-up)")
            claims = await self._exchange(idp, provider, code, pending)
            user = self._user(idp, claims, entry)
            session = await self._create_session(user)
        except LoginRefused as exc:
            exc.clear_cookies.append(cookie_name)
            raise
        entry.update(user=user.metadata.name, session=session.metadata.name, sessionType="CLIENTLESS")
        ttl = max(1.0, (session.spec.expires_at - datetime.now(UTC)).total_seconds())
        token, _ = self._tokens.issue(session.metadata.name, user.metadata.name, ttl)
        response = _redirect(pending.rd)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            domain=self._domain,
            path="/",
            secure=True,
            httponly=True,
            samesite="Lax",
            max_age=int(ttl),
        )
        response.del_cookie(cookie_name, path=CALLBACK_PATH, secure=True, httponly=True, samesite="Lax")
        return response

    async def _logout(self, request: web.BaseRequest, entry: dict[str, Any]) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            entry["reason"] = "no session cookie"
        else:
            try:
                claims = self._tokens.verify(cookie)
            except Unauthenticated as exc:
                entry["reason"] = f"cookie refused, nothing ended ({exc})"
            else:
                entry.update(user=claims.user, session=claims.session)
                try:
                    await self._store.commit([Delete("Session", claims.session)])
                except NotFound:
                    entry["reason"] = "session had already ended"
                else:
                    revision = await self._store.revision()
                    await asyncio.wait_for(self._cache.wait_for(revision), 5)
        response = _page(200, "Signed out", "You are signed out.", [("/login", "Sign in again")])
        response.del_cookie(SESSION_COOKIE, domain=self._domain, path="/", secure=True, httponly=True, samesite="Lax")
        return response

    async def _fetch_json(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", **kwargs.pop("headers", {})}
        try:
            async with self._client.request(
                method, url, headers=headers, timeout=IDP_TIMEOUT, allow_redirects=False, **kwargs
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_IDP_RESPONSE_BYTES:
                        raise LoginRefused(502, f"{what} answer is larger than {MAX_IDP_RESPONSE_BYTES} bytes")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LoginRefused(502, f"{what} unreachable ({type(exc).__name__}: {exc})"[:300]) from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise LoginRefused(502, f"{what} answered {status} without JSON") from None
        if not isinstance(doc, dict):
            raise LoginRefused(502, f"{what} answered {status} with JSON that is not an object")
        return status, doc

    async def _provider(self, idp: IdentityProvider) -> Provider:
        issuer = idp.spec.issuer_url.rstrip("/")
        cached = self._providers.get(issuer)
        if cached is not None and time.monotonic() - cached.fetched < DISCOVERY_TTL_SECONDS:
            return cached
        status, doc = await self._fetch_json("GET", issuer + "/.well-known/openid-configuration", "IdP discovery")
        if status != 200:
            raise LoginRefused(502, f"IdP discovery answered {status}")
        urls = {k: doc.get(k) for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")}
        for key, value in urls.items():
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise LoginRefused(502, f"IdP discovery has no usable {key}")
        if str(urls["issuer"]).rstrip("/") != issuer:
            raise LoginRefused(502, f"IdP discovery names issuer {urls['issuer']!r}, not {idp.spec.issuer_url!r}")
        methods = doc.get("code_challenge_methods_supported")
        if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
            raise LoginRefused(
                502, f"IdP does not support PKCE S256 (code_challenge_methods_supported: {methods!r})"[:300]
            )
        auth_methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        provider = Provider(
            issuer=str(urls["issuer"]),
            authorization_endpoint=str(urls["authorization_endpoint"]),
            token_endpoint=str(urls["token_endpoint"]),
            jwks_uri=str(urls["jwks_uri"]),
            token_auth_methods=tuple(m for m in auth_methods if isinstance(m, str)),
            iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
            fetched=time.monotonic(),
        )
        self._providers[issuer] = provider
        return provider

    def _client_secret(self, idp: IdentityProvider) -> str:
        ref = idp.spec.client_secret
        secret = self._cache.get("Secret", ref.from_secret)
        if not isinstance(secret, Secret):
            raise LoginRefused(503, f"Secret {ref.from_secret!r} of IdentityProvider {idp.metadata.name!r} is missing")
        value = secret.spec.reveal().get(ref.key)
        if not value:
            raise LoginRefused(503, f"Secret {ref.from_secret!r} has no key {ref.key!r}")
        return value.strip()

    async def _exchange(self, idp: IdentityProvider, provider: Provider, code: str, pending: Pending) -> dict[str, Any]:
        """The verified ID token claims for `code`."""
        secret = self._client_secret(idp)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": pending.verifier,
        }
        headers: dict[str, str] = {}
        if (
            "client_secret_basic" in provider.token_auth_methods
            or "client_secret_post" not in provider.token_auth_methods
        ):
            pair = f"{quote(idp.spec.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=idp.spec.client_id, client_secret=secret)
        status, doc = await self._fetch_json(
            "POST", provider.token_endpoint, "IdP token endpoint", data=form, headers=headers
        )
        if status != 200:
            error = str(doc.get("error", ""))[:64]
            detail = str(doc.get("error_description", ""))[:200]
            refused = 400 if error in ("invalid_grant", "invalid_request") else 502
            raise LoginRefused(refused, f"IdP token endpoint refused the code ({status} {error}: {detail})")
        id_token = doc.get("id_token")
        if not isinstance(id_token, str):
            raise LoginRefused(502, "IdP token answer has no id_token")
        claims = await self._verify_id_token(idp, provider, id_token)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
            raise LoginRefused(400, "ID token nonce does not match the login (code from another login)")
        return claims

    async def _verify_id_token(self, idp: IdentityProvider, provider: Provider, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise LoginRefused(502, f"ID token malformed ({exc})") from None
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS:
            raise LoginRefused(502, f"ID token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = await self._signing_key(provider, kid if isinstance(kid, str) else None, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=idp.spec.client_id,
                issuer=provider.issuer,
                leeway=ID_TOKEN_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise LoginRefused(502, f"ID token rejected ({type(exc).__name__}: {exc})"[:300]) from None
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != idp.spec.client_id:
            raise LoginRefused(502, "ID token has several audiences and azp is not our client")
        return claims

    async def _signing_key(self, provider: Provider, kid: str | None, alg: str) -> jwt.PyJWK:
        """The IdP key for `kid` and `alg`; an unknown `kid` refetches the JWKS (key rotation), at most every 30 s."""
        cached = self._keys.get(provider.jwks_uri)
        if cached is None or time.monotonic() - cached.fetched > JWKS_TTL_SECONDS:
            cached = await self._fetch_keys(provider.jwks_uri)
        key = _pick_key(cached.keys, kid, alg)
        if key is None and time.monotonic() - cached.fetched > JWKS_REFRESH_INTERVAL_SECONDS:
            key = _pick_key((await self._fetch_keys(provider.jwks_uri)).keys, kid, alg)
        if key is None:
            raise LoginRefused(502, f"ID token key {kid!r} for {alg} is not in the IdP's JWKS")
        return key

    async def _fetch_keys(self, uri: str) -> _Keys:
        status, doc = await self._fetch_json("GET", uri, "IdP JWKS")
        keys = doc.get("keys")
        if status != 200 or not isinstance(keys, list):
            raise LoginRefused(502, f"IdP JWKS answered {status} without keys")
        fetched = _Keys([k for k in keys if isinstance(k, dict)], time.monotonic())
        self._keys[uri] = fetched
        return fetched

    def _user(self, idp: IdentityProvider, claims: dict[str, Any], entry: dict[str, Any]) -> User:
        claim = idp.spec.user_claim
        value = claims.get(claim)
        entry["idpSubject"] = str(claims.get("sub", ""))[:255]
        if not isinstance(value, str) or not value:
            raise LoginRefused(403, f"ID token has no {claim!r} claim")
        entry["idpClaim"] = f"{claim}={value[:255]}"
        users = [u for u in self._cache.list_kind("User") if isinstance(u, User)]
        if claim == "email":
            if claims.get("email_verified") is False:
                raise LoginRefused(403, f"IdP says the email {value[:255]!r} is not verified")
            matches = [u for u in users if u.spec.email is not None and u.spec.email.lower() == value.lower()]
        else:
            matches = [u for u in users if u.metadata.name == value]
        if not matches:
            raise LoginRefused(403, f"no User has {'email' if claim == 'email' else 'name'} {value[:255]!r}")
        if len(matches) > 1:
            raise LoginRefused(403, f"several Users have email {value[:255]!r}")
        user = matches[0]
        entry["user"] = user.metadata.name
        if user.spec.is_disabled:
            raise LoginRefused(403, f"user {user.metadata.name!r} is disabled")
        if user.spec.type is not UserType.HUMAN:
            raise LoginRefused(403, f"user {user.metadata.name!r} is a {user.spec.type.value}, not HUMAN")
        return user

    async def _create_session(self, user: User) -> Session:
        expires = datetime.now(UTC) + self._session_ttl
        session = Session.model_validate(
            {
                "kind": "Session",
                "metadata": {"name": f"{user.metadata.name[:40]}-{secrets.token_hex(6)}"},
                "spec": {
                    "user": user.metadata.name,
                    "type": SessionType.CLIENTLESS.value,
                    "expiresAt": expires.isoformat(),
                },
            }
        )
        (stored,) = await self._store.commit([Create(session)])
        assert isinstance(stored, Session)
        try:
            await asyncio.wait_for(self._cache.wait_for(int(stored.metadata.resource_version or 0)), 5)
        except TimeoutError:
            raise LoginRefused(503, "the new session did not reach the cache in 5 s") from None
        return stored
