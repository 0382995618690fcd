"""A gateway in front of an echo upstream that records exactly what it received, for the request-hygiene
attack tests (tests/integration/test_hardening_*.py), and raw TLS sockets for bytes clients refuse to send."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.integration.gateway_env import apply_docs, create_credential

SET_COOKIES = "x-echo-set-cookie"
"""A JSON list of Set-Cookie values the echo upstream answers with."""
DENY_ADMIN = "ctx.request.http.path.startsWith('/admin')"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the upstream received it: the request target as sent, and every header line."""

    method: str
    target: str
    headers: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Echo:
    """The upstream: records requests, answers 200 with the Set-Cookie headers a request asks for."""

    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.seen.append(Seen(request.method, request.raw_path, headers))
        response = web.json_response({"ok": True})
        for cookie in json.loads(request.headers.get(SET_COOKIES, "[]")):
            response.headers.add("Set-Cookie", cookie)
        return response

    @property
    def last(self) -> Seen:
        return self.seen[-1]


@dataclass
class Hygiene:
    cluster: RunningCluster
    echo: Echo
    token: str
    upstream: str

    @property
    def domain(self) -> str:
        return self.cluster.domain

    def host(self, service: str = "echo") -> str:
        return f"{service}.{self.domain}"

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cluster.access_log()]

    async def send(self, request: bytes, *, port: int | None = None) -> bytes:
        """Send raw bytes over TLS to the public listener (or `port`) and read the whole answer."""
        context = ssl.create_default_context(cafile=str(self.cluster.home / "ca.crt"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port or self.cluster.public_port, ssl=context, server_hostname=self.host()
        )
        try:
            writer.write(request)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    async def get(self, target: str, headers: list[tuple[str, str]] | None = None, service: str = "echo") -> bytes:
        """A raw GET with the bearer token unless `headers` carry their own credentials."""
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host(service)}", "Connection: close"]
        given = headers if headers is not None else [("Authorization", f"Bearer {self.token}")]
        lines += [f"{k}: {v}" for k, v in given]
        return await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape"))


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def service(name: str, upstream: str, header: dict[str, Any] | None = None) -> dict[str, Any]:
    """A public Service in front of the echo upstream: DENY `/admin...`, ALLOW everything else."""
    http: dict[str, Any] = {"header": header} if header else {}
    return {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "isPublic": True,
            "config": {"upstream": {"url": upstream}, "http": http},
            "authorization": {
                "inlinePolicies": [
                    {
                        "spec": {
                            "rules": [
                                {"effect": "DENY", "priority": 1, "condition": {"match": DENY_ADMIN}},
                                {"effect": "ALLOW", "priority": 2, "condition": {"matchAny": True}},
                            ]
                        }
                    }
                ]
            },
        },
    }


@asynccontextmanager
async def hygiene_env(tmp: Path) -> AsyncIterator[Hygiene]:
    echo = Echo()
    server = web.Server(echo.handle, access_log=None)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    cluster = await asyncio.to_thread(start_cluster, tmp / "home")
    try:
        user = {"kind": "User", "metadata": {"name": "tester"}, "spec": {"type": "HUMAN", "email": "t@example.com"}}
        passing = {"passIdentityHeaders": ["True-Client-IP", "X-Forwarded-Prefix"]}
        apply_docs(cluster, [user, service("echo", upstream), service("passing", upstream, passing)], tmp)
        token = create_credential(cluster, "tester-pat", "tester", "access-token")
        yield Hygiene(cluster, echo, token, upstream)
    finally:
        await asyncio.to_thread(stop_cluster, cluster)
        listener.close()
        await server.shutdown(1)
