"""UserApi: the cluster's client endpoints (`https://<domain>/v1/client/...`), typed with cluster.resources.wire.

`address` pins where `<domain>` is reached (like curl's --resolve): TLS, SNI and Host still use the domain,
so the cluster certificate is verified against it. Failures become `ClientError`s that say what to do.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from pydantic import BaseModel, ValidationError

from wardgate.client.errors import ClientError
from wardgate.cluster.resources.wire import (
    ConnectRequest,
    ConnectResponse,
    LoginRequest,
    RefreshRequest,
    ServiceList,
    SessionInfo,
    TokenGrant,
)

M = TypeVar("M", bound=BaseModel)


class SessionEnded(ClientError):
    """The cluster no longer accepts this client's Session (revoked, expired, or its user disabled)."""


def split_address(address: str) -> tuple[str, int | None]:
    """`10.0.0.1`, `10.0.0.1:8443`, `[fd00::1]:443` -> (host, port or None)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, None


class _PinnedResolver(AbstractResolver):
    def __init__(self, name: str, address: str) -> None:
        self._name = name
        self._address = address
        self._default = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._name:
            return await self._default.resolve(host, port, family)
        return [
            {
                "hostname": host,
                "host": self._address,
                "port": port,
                "family": socket.AF_INET6 if ":" in self._address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        await self._default.close()


class UserApi:
    """Use as `async with UserApi(domain, address, ca_file) as api:`; `token` is sent as Bearer when set."""

    def __init__(self, domain: str, address: str | None = None, ca_file: str | None = None) -> None:
        host, port = split_address(address) if address else (None, None)
        self.domain = domain
        self.host = host or domain
        self.base = f"https://{domain}" + (f":{port}" if port and port != 443 else "")
        self.token: str | None = None
        self._ca_file = ca_file
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot use the CA file {ca_file}: {exc}") from None
        resolver = _PinnedResolver(domain, host) if host else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, resolver=resolver),
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: BaseModel | None, answer: type[M] | None) -> Any:
        url = f"{self.base}/v1/client/{path}"
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = body.model_dump_json().encode() if body is not None else None
        via = f" (via {self.host})" if self.host != self.domain else ""
        try:
            async with self._session.request(method, url, data=data, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ClientError(
                f"the cluster's TLS certificate is not trusted ({exc.certificate_error}): pass the cluster CA with "
                "`wardgate login --ca FILE` (your administrator has it: ca.crt in the cluster home)"
            ) from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ClientError(
                f"cannot reach the cluster at {self.base}{via}: {exc or type(exc).__name__}. Check --domain and "
                "--address, your network, and that the cluster is running"
            ) from None
        if status >= 400:
            raise _failure(status, raw, path)
        if answer is None:
            return None
        try:
            return answer.model_validate_json(raw)
        except ValidationError as exc:
            raise ClientError(f"the cluster's answer to {path} is malformed: {exc}") from None

    async def login(self, auth_token: str) -> TokenGrant:
        grant: TokenGrant = await self._call("POST", "login", LoginRequest(auth_token=auth_token), TokenGrant)
        return grant

    async def refresh(self, refresh_token: str) -> TokenGrant:
        grant: TokenGrant = await self._call("POST", "refresh", RefreshRequest(refresh_token=refresh_token), TokenGrant)
        return grant

    async def connect(self, wg_public_key: str) -> ConnectResponse:
        answer: ConnectResponse = await self._call(
            "POST", "connect", ConnectRequest(wg_public_key=wg_public_key), ConnectResponse
        )
        return answer

    async def disconnect(self) -> None:
        await self._call("POST", "disconnect", None, None)

    async def logout(self) -> None:
        await self._call("POST", "logout", None, None)

    async def session(self) -> SessionInfo:
        info: SessionInfo = await self._call("GET", "session", None, SessionInfo)
        return info

    async def services(self) -> ServiceList:
        services: ServiceList = await self._call("GET", "services", None, ServiceList)
        return services


def _failure(status: int, raw: bytes, path: str) -> ClientError:
    message = f"HTTP {status}"
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(raw).get("error", {}).get("message") or message
    if status == 401:
        if path == "login":
            return ClientError(f"login refused: {message}")
        return SessionEnded(f"your session was revoked or has expired ({message}): run `wardgate login` again")
    if status == 503:
        return ClientError(f"the cluster cannot do this now: {message}")
    return ClientError(f"{path} failed: {message} (HTTP {status})")
