"""Revocation ends live connections (real cluster process, real TLS): deleting a Credential or a Session, or
disabling a User, ends that identity's stream being relayed and its idle keep-alive connections within a
second, on every worker; another identity's connection stays open."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs

KEY = "sk-revocation-upstream"
WORDS = 40
CHUNK_DELAY = 0.1
"""The stream lasts WORDS * CHUNK_DELAY seconds when nothing cuts it."""
DEADLINE = 1.0
IDLE_CONNECTIONS = 6
"""Idle keep-alive connections of the revoked identity (SO_REUSEPORT spreads them over the workers)."""


def _docs(upstream: str, bot_disabled: bool = False) -> list[dict[str, Any]]:
    allow = 'ctx.user.metadata.name in ["bot", "other"]'
    return [
        {"kind": "User", "metadata": {"name": "bot"}, "spec": {"type": "WORKLOAD", "isDisabled": bot_disabled}},
        {"kind": "User", "metadata": {"name": "other"}, "spec": {"type": "WORKLOAD"}},
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {
                "isPublic": True,
                "config": {"upstream": {"url": upstream}, "http": {"auth": {"bearer": {"fromSecret": "upstream-key"}}}},
                "authorization": {
                    "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"match": allow}}]}}]
                },
            },
        },
    ]


class Connection:
    """One raw HTTP/1.1 keep-alive connection over TLS to the public listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, cluster: RunningCluster, service: str) -> Connection:
        context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
        host = f"{service}.{cluster.domain}"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cluster.public_port, ssl=context, server_hostname=host
        )
        return cls(reader, writer, host)

    async def send(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> None:
        data = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return int(lines[0].split()[1]), headers

    async def request(self, method: str, path: str, token: str) -> int:
        """A whole request whose answer has a Content-Length; the connection stays open after it."""
        await self.send(method, path, token)
        status, headers = await self.head()
        await self.reader.readexactly(int(headers["content-length"]))
        return status

    async def closed_within(self, seconds: float) -> bytes | None:
        """What arrived until the server closed the connection, None if it was still open after `seconds`."""
        received = bytearray()
        try:
            async with asyncio.timeout(seconds):
                while chunk := await self.reader.read(65536):
                    received += chunk
        except TimeoutError:
            return None
        except (ConnectionError, ssl.SSLError):
            pass
        return bytes(received)

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def _cluster(tmp_path: Path, workers: int) -> AsyncIterator[tuple[RunningCluster, str]]:
    fake = FakeOpenAI(api_key=KEY, chunk_delay=CHUNK_DELAY)
    async with fake.serve() as upstream:
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", workers=workers)
        try:
            apply_docs(cluster, _docs(upstream), tmp_path)
            cluster.ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
            yield cluster, upstream
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
    log = cluster.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


async def _admin(cluster: RunningCluster, method: str, path: str, **kw: Any) -> Any:
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    headers = {"Authorization": f"Bearer {cluster.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, cluster.url + path, ssl=context, headers=headers, **kw) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def _access_token(cluster: RunningCluster, credential: str, user: str) -> str:
    created = await _admin(
        cluster, "POST", "/api/v1/credentials", json={"name": credential, "user": user, "type": "oauth2"}
    )
    form = {
        "grant_type": "client_credentials",
        "client_id": created["clientId"],
        "client_secret": created["clientSecret"],
    }
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(cluster.public_url() + "/oauth2/token", data=form, ssl=context) as r,
    ):
        assert r.status == 200, await r.text()
        token: str = (await r.json())["access_token"]
        return token


async def _session_of(cluster: RunningCluster, credential: str) -> str:
    listed = await _admin(cluster, "GET", "/api/v1/sessions")
    names = [s["metadata"]["name"] for s in listed["items"] if s["spec"].get("credential") == credential]
    assert len(names) == 1, listed
    name: str = names[0]
    return name


async def _start_stream(cluster: RunningCluster, token: str) -> Connection:
    stream = await Connection.open(cluster, "llm")
    words = " ".join(f"w{i}" for i in range(WORDS))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": words}]}
    await stream.send("POST", "/v1/chat/completions", token, body)
    status, headers = await stream.head()
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), (status, headers)
    assert b"data:" in await stream.reader.readuntil(b"\n\n")
    return stream


@pytest.mark.usefixtures("loopback_names")
@pytest.mark.parametrize(
    ("revoke", "workers"),
    [("credential", 1), ("session", 1), ("user-disabled", 1), ("credential", 2)],
)
async def test_revocation_ends_streams_and_idle_connections(tmp_path: Path, revoke: str, workers: int) -> None:
    async with _cluster(tmp_path, workers) as (cluster, upstream):
        token = await _access_token(cluster, "bot-cred", "bot")
        other_token = await _access_token(cluster, "other-cred", "other")
        streams = [await _start_stream(cluster, token) for _ in range(2)]
        idle = [await Connection.open(cluster, "llm") for _ in range(IDLE_CONNECTIONS)]
        for connection in idle:
            assert await connection.request("GET", "/v1/models", token) == 200
        bystander = await Connection.open(cluster, "llm")
        assert await bystander.request("GET", "/v1/models", other_token) == 200

        started = time.monotonic()
        if revoke == "credential":
            await _admin(cluster, "DELETE", "/api/v1/credentials/bot-cred")
        elif revoke == "session":
            await _admin(cluster, "DELETE", f"/api/v1/sessions/{await _session_of(cluster, 'bot-cred')}")
        else:
            await _admin(cluster, "PUT", "/api/v1/users/bot", json=_docs(upstream, bot_disabled=True)[0])
        received = await asyncio.gather(*(c.closed_within(DEADLINE) for c in [*streams, *idle]))
        elapsed = time.monotonic() - started
        print(f"revoke {revoke} with {workers} worker(s): every connection ended {elapsed:.3f} s after the request")

        assert all(r is not None for r in received), f"{sum(r is None for r in received)} connections stayed open"
        for data in received[: len(streams)]:
            assert data is not None and b"[DONE]" not in data, "the stream ran to its end"
        assert elapsed < DEADLINE, elapsed
        assert await bystander.closed_within(0.2) is None, "another identity's connection was closed"
        assert await bystander.request("GET", "/v1/models", other_token) == 200
        for connection in [*streams, *idle, bystander]:
            connection.close()
