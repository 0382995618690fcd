"""The OIDC client of the browser login: discovery, the authorization URL, code exchange, ID-token checks.

    discover(issuer) ─▶ /.well-known/openid-configuration (cached 1 h): endpoints, PKCE S256, auth methods
    authorization_url(...) ─▶ code flow with PKCE S256, state and nonce
    exchange(code) ─▶ token endpoint (client_secret_basic, else _post) ─▶ id_token
        ─▶ signature with the IdP's JWKS (cached 1 h; an unknown kid refetches, at most every 30 s)
        ─▶ iss, aud (azp when several), exp, iat, sub, nonce ─▶ the verified claims

The IdP is spoken to with the caller's aiohttp session; compressed answers are not asked for and an answer
is read up to 1 MiB. Every failure is an OidcError whose text is for the access log, never for the browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import jwt
import orjson

DISCOVERY_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0
JWKS_REFRESH_INTERVAL_SECONDS = 30.0
ID_TOKEN_LEEWAY_SECONDS = 60
IDP_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_IDP_RESPONSE_BYTES = 1 << 20
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric algorithms only: `none` and the HMAC family (keyed by the client secret) are refused."""


class OidcError(Exception):
    """An IdP step failed. `bad_request`: the browser brought something wrong (a used or foreign code);
    otherwise the IdP is unreachable or answered against the protocol."""

    def __init__(self, reason: str, *, bad_request: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad_request = bad_request


@dataclass(frozen=True, slots=True)
class Provider:
    """What the IdP's discovery document says, as far as the login needs it."""

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


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier))."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def authorization_url(
    provider: Provider,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    nonce: str,
    verifier: str,
) -> str:
    """Where to send the browser: the code flow with PKCE S256; `openid` is always among the scopes."""
    return with_query(
        provider.authorization_endpoint,
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(dict.fromkeys(["openid", *scopes])),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        },
    )


def _pick_key(keys: list[dict[str, Any]], kid: str | None, alg: str) -> jwt.PyJWK | None:
    usable = [k for k in keys if k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
    candidates = usable if kid is None else [k for k in usable if k.get("kid") == kid]
    if len(candidates) != 1:
        return None
    try:
        return jwt.PyJWK(candidates[0], algorithm=alg)
    except jwt.PyJWTError as exc:
        raise OidcError(f"IdP key {kid!r} is unusable for {alg} ({exc})") from None


class OidcClient:
    """Talks to OIDC IdPs (see the module docstring); discovery documents and JWKS are cached per URL."""

    def __init__(self, client: aiohttp.ClientSession) -> None:
        self._client = client
        self._providers: dict[str, Provider] = {}
        self._keys: dict[str, _Keys] = {}

    async def discover(self, issuer_url: str) -> Provider:
        """The IdP's endpoints; its document must name `issuer_url` as its issuer and allow PKCE S256."""
        issuer = issuer_url.rstrip("/")
        cached = self._providers.get(issuer)
        if cached is not None and time.monotonic() - cached.fetched < DISCOVERY_TTL_SECONDS:
            return cached
        status, doc = await self._fetch_json("GET", issuer + "/.well-known/openid-configuration", "IdP discovery")
        if status != 200:
            raise OidcError(f"IdP discovery answered {status}")
        urls = {k: doc.get(k) for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")}
        for key, value in urls.items():
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise OidcError(f"IdP discovery has no usable {key}")
        if str(urls["issuer"]).rstrip("/") != issuer:
            raise OidcError(f"IdP discovery names issuer {urls['issuer']!r}, not {issuer_url!r}")
        methods = doc.get("code_challenge_methods_supported")
        if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
            raise OidcError(f"IdP does not support PKCE S256 (code_challenge_methods_supported: {methods!r})"[:300])
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

    async def exchange(
        self,
        provider: Provider,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        code: str,
        verifier: str,
        nonce: str,
    ) -> dict[str, Any]:
        """The verified ID token claims for `code`; the token's nonce must be the login's."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers: dict[str, str] = {}
        if (
            "client_secret_basic" in provider.token_auth_methods
            or "client_secret_post" not in provider.token_auth_methods
        ):
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=client_id, client_secret=client_secret)
        status, doc = await self._fetch_json(
            "POST", provider.token_endpoint, "IdP token endpoint", data=form, headers=headers
        )
        if status != 200:
            error = str(doc.get("error", ""))[:64]
            detail = str(doc.get("error_description", ""))[:200]
            raise OidcError(
                f"IdP token endpoint refused the code ({status} {error}: {detail})",
                bad_request=error in ("invalid_grant", "invalid_request"),
            )
        id_token = doc.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("IdP token answer has no id_token")
        claims = await self._verify_id_token(provider, client_id, id_token)
        found = claims.get("nonce")
        if not isinstance(found, str) or not hmac.compare_digest(found.encode(), nonce.encode()):
            raise OidcError("ID token nonce does not match the login (code from another login)", bad_request=True)
        return claims

    async def _verify_id_token(self, provider: Provider, client_id: str, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token malformed ({exc})") from None
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS:
            raise OidcError(f"ID token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = await self._signing_key(provider, kid if isinstance(kid, str) else None, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=client_id,
                issuer=provider.issuer,
                leeway=ID_TOKEN_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token rejected ({type(exc).__name__}: {exc})"[:300]) from None
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
            raise OidcError("ID token has several audiences and azp is not our client")
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
            raise OidcError(f"ID token key {kid!r} for {alg} is not in the IdP's JWKS")
        return key

    async def _fetch_keys(self, uri: str) -> _Keys:
        status, doc = await self._fetch_json("GET", uri, "IdP JWKS")
        keys = doc.get("keys")
        if status != 200 or not isinstance(keys, list):
            raise OidcError(f"IdP JWKS answered {status} without keys")
        fetched = _Keys([k for k in keys if isinstance(k, dict)], time.monotonic())
        self._keys[uri] = fetched
        return fetched

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
                        raise OidcError(f"{what} answer is larger than {MAX_IDP_RESPONSE_BYTES} bytes")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"{what} unreachable ({type(exc).__name__}: {exc})"[:300]) from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise OidcError(f"{what} answered {status} without JSON") from None
        if not isinstance(doc, dict):
            raise OidcError(f"{what} answered {status} with JSON that is not an object")
        return status, doc
