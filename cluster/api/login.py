"""Human browser login through an OIDC IdentityProvider, on `https://<domain>`.

    GET /login[?rd=&idp=] ─▶ the IdentityProvider ─▶ its discovery document (identity.oidc, cached)
        ─▶ 302 to the authorization endpoint (code flow, PKCE S256, state, nonce)
           + the pending login {verifier, nonce, rd, idp} in a cookie named after the state, sealed for that
             state (identity.sealed; 10 min): only the browser that started the login can finish it, and any
             worker of any node can, since none keeps it in memory
    GET /login/callback?code=&state= ─▶ the state's cookie opens (not forged, altered or expired) ─▶ cleared
        ─▶ identity.oidc: code exchange (PKCE verifier, client secret from the referenced Secret)
           and the ID token checks (signature, iss, aud, exp, nonce) ─▶ claim `userClaim` ─▶ User
        ─▶ SessionService.open (CLIENTLESS; the user's oldest browser Sessions beyond the cap are evicted)
        ─▶ cookie `wardgate_session` for `<domain>` and its subdomains ─▶ 302 to rd
    GET|POST /logout ─▶ the Session named by the cookie's token is revoked ─▶ cookie cleared

Every request writes one access-log line (api.site_log); a refusal carries its reason there, and the
browser gets a plain page without it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from wardgate.cluster.api.site_log import Refused, route
from wardgate.cluster.errors import Unauthenticated, Unavailable
from wardgate.cluster.identity.authenticate import SESSION_COOKIE, Authenticator
from wardgate.cluster.identity.oidc import OidcClient, OidcError, Provider, authorization_url
from wardgate.cluster.identity.sealed import SealedError, SealedValues
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.identity.tokens import TokenService
from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.resources.identity_provider import IdentityProvider
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.resources.user import User, UserType
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

SESSION_TTL = timedelta(hours=8)
PENDING_TTL_SECONDS = 600.0
MAX_RD_LENGTH = 2048
LOGIN_COOKIE_PREFIX = "wardgate_login_"
CALLBACK_PATH = "/login/callback"


class LoginRefused(Refused):
    """A refused login step: `status`, the `reason` for the access log, and the `message` the browser sees."""

    def __init__(self, status: int, reason: str, message: str = "", *, as_json: bool = False) -> None:
        super().__init__(reason)
        self.status, self.as_json = status, as_json
        self.message = message or {
            400: "This sign-in link is invalid or was already used. Start again from the page you wanted.",
            403: "You are not allowed to sign in here.",
            404: "Not found.",
            502: "The identity provider did not answer as expected. Try again later.",
            503: "Sign-in is not available right now. Try again later.",
        }.get(status, "Sign-in failed.")
        self.clear_cookies: list[str] = []

    def response(self) -> web.StreamResponse:
        if self.as_json:
            error = "not_found" if self.status == 404 else "unavailable"
            body = orjson.dumps({"error": error, "error_description": self.message})
            response = web.Response(status=self.status, body=body, content_type="application/json")
            response.headers["Cache-Control"] = "no-store"
        else:
            response = page(self.status, "Sign-in failed" if self.status != 404 else "Not found", self.message)
        for name in self.clear_cookies:
            response.del_cookie(name, path=CALLBACK_PATH, secure=True, httponly=True, samesite="Lax")
        return response


def page(status: int, title: str, message: str, links: list[tuple[str, str]] | None = None) -> web.Response:
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


def _login_cookie(state: str) -> str:
    return LOGIN_COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Pending:
    """A login between /login and its callback (carried by the browser, sealed for its state)."""

    verifier: str
    nonce: str
    rd: str
    idp: str

    def seal(self, sealed: SealedValues, state: str, ttl: float) -> str:
        return sealed.seal({"verifier": self.verifier, "nonce": self.nonce, "rd": self.rd, "idp": self.idp}, state, ttl)

    @classmethod
    def open(cls, sealed: SealedValues, cookie: str, state: str) -> Pending:
        try:
            value = sealed.open(cookie, state)
        except SealedError as exc:
            message = (
                "This sign-in took too long. Start again from the page you wanted."
                if exc.reason.endswith("expired")
                else ""
            )
            raise LoginRefused(400, f"login cookie refused: {exc.reason}", message) from None
        return cls(str(value["verifier"]), str(value["nonce"]), str(value["rd"]), str(value["idp"]))


class BrowserLogin:
    """The browser login endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        base_url: str,
        cache: ResourceCache,
        authenticator: Authenticator,
        tokens: TokenService,
        sessions: SessionService,
        oidc: OidcClient,
        pending: SealedValues,
        session_ttl: timedelta = SESSION_TTL,
        pending_ttl: float = PENDING_TTL_SECONDS,
    ) -> None:
        self._domain = domain.lower().rstrip(".")
        self._base = base_url.rstrip("/")
        self._cache = cache
        self._auth = authenticator
        self._tokens = tokens
        self._sessions = sessions
        self._oidc = oidc
        self._session_ttl = session_ttl
        self._pending_ttl = pending_ttl
        self._sealed = pending

    @property
    def redirect_uri(self) -> str:
        return self._base + CALLBACK_PATH

    def routes(self) -> list[web.RouteDef]:
        return [
            route("GET", "/login", "login", self._login),
            route("GET", CALLBACK_PATH, "callback", self._callback),
            route("GET", "/logout", "logout", self._logout),
            route("POST", "/logout", "logout", self._logout),
            route("GET", "/", "home", self._home),
        ]

    def login_url(self) -> str | None:
        """Where the gateway sends browsers without a session; None while no IdentityProvider exists."""
        return f"{self._base}/login" if self._cache.list_kind("IdentityProvider") else None

    async def _home(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                identity = self._auth.from_token(cookie)
            except Unauthenticated:
                pass
            else:
                return page(
                    200, "Signed in", f"You are signed in as {identity.user.metadata.name}.", [("/logout", "Sign out")]
                )
        links = [("/login", "Sign in")] if self.login_url() else []
        return page(200, "Not signed in", "You are not signed in.", links)

    async def _provider(self, idp: IdentityProvider) -> Provider:
        try:
            return await self._oidc.discover(idp.spec.issuer_url)
        except OidcError as exc:
            raise LoginRefused(502, exc.reason) from None

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

    async def _login(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        rd = self._return_to(request.query.get("rd"))
        idp = self._identity_provider(request.query.get("idp"))
        if idp is None:
            names = [p for p in self._cache.list_kind("IdentityProvider") if isinstance(p, IdentityProvider)]
            entry["note"] = "several IdentityProviders: showed the choice"
            links = [
                (f"/login?{urlencode({'idp': p.metadata.name, 'rd': rd})}", p.spec.display_name or p.metadata.name)
                for p in names
            ]
            return page(200, "Sign in", "Choose how to sign in.", links)
        entry["idp"] = idp.metadata.name
        provider = await self._provider(idp)
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
        pending = Pending(verifier, nonce, rd, idp.metadata.name)
        location = authorization_url(
            provider,
            client_id=idp.spec.client_id,
            redirect_uri=self.redirect_uri,
            scopes=idp.spec.scopes,
            state=state,
            nonce=nonce,
            verifier=verifier,
        )
        response = _redirect(location)
        response.set_cookie(
            _login_cookie(state),
            pending.seal(self._sealed, state, self._pending_ttl),
            path=CALLBACK_PATH,
            secure=True,
            httponly=True,
            samesite="Lax",
            max_age=int(self._pending_ttl),
        )
        return response

    async def _callback(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        query = request.query
        for name in ("state", "code", "iss", "error"):
            if len(query.getall(name, [])) > 1:
                raise LoginRefused(400, f"parameter {name!r} given more than once")
        state = query.get("state", "")
        if not state:
            raise LoginRefused(400, "callback without state")
        cookie_name = _login_cookie(state)
        try:
            # The state picks the cookie and is the associated data it was sealed with: a callback whose state
            # this browser did not start (login CSRF, a stolen callback URL) finds no cookie that opens.
            cookie = request.cookies.get(cookie_name)
            if not cookie:
                raise LoginRefused(
                    400,
                    "no login cookie for this state (forged state, login not started in this browser, "
                    "already finished, or expired)",
                )
            pending = Pending.open(self._sealed, cookie, state)
            entry["idp"] = pending.idp
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
            session = await self._open_session(user)
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

    async def _logout(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
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
                if not await self._sessions.revoke(claims.session):
                    entry["reason"] = "session had already ended"
        response = page(200, "Signed out", "You are signed out.", [("/login", "Sign in again")])
        response.del_cookie(SESSION_COOKIE, domain=self._domain, path="/", secure=True, httponly=True, samesite="Lax")
        return response

    def _client_secret(self, idp: IdentityProvider) -> str:
        ref = idp.spec.client_secret
        secret = self._cache.get("Secret", ref.from_secret)
        if not isinstance(secret, Secret):
            raise LoginRefused(503, f"Secret {ref.from_secret!r} of IdentityProvider {idp.metadata.name!r} is missing")
        value = secret.spec.reveal().get(ref.key)
        if not value:
            raise LoginRefused(503, f"Secret {ref.from_secret!r} has no key {ref.key!r}")
        return value.strip()

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

    async def _exchange(self, idp: IdentityProvider, provider: Provider, code: str, pending: Pending) -> dict[str, Any]:
        """The verified ID token claims for `code`."""
        try:
            return await self._oidc.exchange(
                provider,
                client_id=idp.spec.client_id,
                client_secret=self._client_secret(idp),
                redirect_uri=self.redirect_uri,
                code=code,
                verifier=pending.verifier,
                nonce=pending.nonce,
            )
        except OidcError as exc:
            raise LoginRefused(400 if exc.bad_request else 502, exc.reason) from None

    async def _open_session(self, user: User) -> Session:
        try:
            return await self._sessions.open(user.metadata.name, SessionType.CLIENTLESS, self._session_ttl)
        except Unavailable as exc:
            raise LoginRefused(503, f"the new session is not enforced yet ({exc})") from None
