"""Upstream credentials from Secrets: the header the upstream gets instead of whatever the client sent."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping

import aiohttp

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.resources.service import OAuth2ClientCredentialsAuth, UpstreamAuth
from wardgate.cluster.resources.types import SecretRef


def secret_value(secrets: Mapping[str, Mapping[str, str]], ref: SecretRef) -> str:
    data = secrets.get(ref.from_secret)
    if data is None:
        raise Unavailable(f"secret {ref.from_secret!r} does not exist")
    if ref.key not in data:
        raise Unavailable(f"secret {ref.from_secret!r} has no key {ref.key!r}")
    value = data[ref.key].strip()
    if any(c in value for c in "\r\n\0"):
        raise Unavailable(f"secret {ref.from_secret!r} holds CR, LF or NUL and cannot go into a header")
    return value


class OAuth2TokenCache:
    """Client-credentials tokens for upstreams, fetched once and reused until shortly before expiry."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def token(self, auth: OAuth2ClientCredentialsAuth, secret: str) -> str:
        key = (auth.token_url, auth.client_id, secret)
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            form = {"grant_type": "client_credentials", "client_id": auth.client_id, "client_secret": secret}
            if auth.scopes:
                form["scope"] = " ".join(auth.scopes)
            try:
                async with self._session.post(auth.token_url, data=form, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    body = await r.json(content_type=None)
                    if r.status != 200 or not isinstance(body, dict) or "access_token" not in body:
                        raise Unavailable(f"upstream token endpoint {auth.token_url} answered {r.status}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise Unavailable(f"upstream token endpoint {auth.token_url} failed: {type(exc).__name__}") from None
            lifetime = float(body.get("expires_in", 300))
            self._tokens[key] = (str(body["access_token"]), time.monotonic() + max(lifetime - 30, lifetime / 2))
            return str(body["access_token"])


async def auth_header(
    auth: UpstreamAuth, secrets: Mapping[str, Mapping[str, str]], oauth2: OAuth2TokenCache
) -> tuple[str, str]:
    """(header name, value) to send upstream; Unavailable when a Secret is missing."""
    if auth.bearer is not None:
        return "Authorization", f"Bearer {secret_value(secrets, auth.bearer)}"
    if auth.basic is not None:
        pair = f"{auth.basic.username}:{secret_value(secrets, auth.basic.password)}".encode()
        return "Authorization", "Basic " + base64.b64encode(pair).decode()
    if auth.custom is not None:
        return auth.custom.header, auth.custom.prefix + secret_value(secrets, auth.custom)
    assert auth.oauth2_client_credentials is not None
    cc = auth.oauth2_client_credentials
    return "Authorization", f"Bearer {await oauth2.token(cc, secret_value(secrets, cc.client_secret))}"
