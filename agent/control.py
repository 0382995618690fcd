"""ControlClient: the agent's only link to the cluster, its admin API (never the store).

    register(NodeRegistration) ─PUT /agent/v1/nodes/<node>─▶ TunnelNetwork
    peer_sets() ─GET /agent/v1/watch─▶ NDJSON lines ─▶ PeerSet snapshots (heartbeats skipped)
                 a silent or broken stream is dropped and reopened with backoff, forever

Every snapshot is complete, so a reconnect (or an agent restart) needs no memory of what came before.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from wardgate.cluster.resources.wire import NodeRegistration, NodeStatus, PeerSet, TunnelNetwork, WatchEvent

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024 * 1024
"""A snapshot is one line: ~250 bytes per peer."""


class ClusterConnection(BaseModel):
    """Where the cluster's admin API is (loopback on a single node) and the agent's credential."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = "https://127.0.0.1:9443"
    ca_file: Path | None = None
    token_file: Path


class ControlError(Exception):
    """The cluster refused or could not be reached; the message says which and what to check."""


class ControlClient:
    """Use as `async with ControlClient(connection, node) as control:`."""

    def __init__(self, connection: ClusterConnection, node: str, silence: float = 15.0) -> None:
        self._url = connection.url.rstrip("/")
        self._connection = connection
        self._node = node
        self._silence = silence
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        try:
            token = self._connection.token_file.read_text().strip()
        except OSError as exc:
            raise ControlError(f"cannot read the agent's token: {exc}") from None
        context = ssl.create_default_context(cafile=self._connection.ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=self._silence),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ControlClient inside `async with`")
        return self._session

    async def register(self, registration: NodeRegistration) -> TunnelNetwork:
        url = f"{self._url}/agent/v1/nodes/{self._node}"
        body = registration.model_dump_json().encode()
        try:
            async with self._http.put(url, data=body, headers={"Content-Type": "application/json"}) as response:
                text = await response.text()
                _check(response.status, text, "register")
                return TunnelNetwork.model_validate_json(text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"cannot reach the cluster at {self._url}: {exc or type(exc).__name__}") from None
        except ValidationError as exc:
            raise ControlError(f"the cluster's registration answer is malformed: {exc}") from None

    async def report(self, status: NodeStatus) -> None:
        """Send the device's peer status (best effort: failures are the caller's to log)."""
        url = f"{self._url}/agent/v1/nodes/{self._node}/status"
        body = status.model_dump_json().encode()
        try:
            async with self._http.put(url, data=body, headers={"Content-Type": "application/json"}) as response:
                _check(response.status, await response.text(), "status report")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"cannot reach the cluster at {self._url}: {exc or type(exc).__name__}") from None

    async def watch(self) -> AsyncIterator[PeerSet]:
        """One watch stream: PeerSets until it ends or goes silent (ControlError)."""
        try:
            async with self._http.get(f"{self._url}/agent/v1/watch") as response:
                if response.status != 200:
                    _check(response.status, await response.text(), "watch")
                async for line in _lines(response.content):
                    event = WatchEvent.model_validate_json(line)
                    if event.type == "SNAPSHOT" and event.peer_set is not None:
                        yield event.peer_set
                raise ControlError("the cluster closed the watch stream")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"watch stream from {self._url} failed: {exc or type(exc).__name__}") from None
        except ValidationError as exc:
            raise ControlError(f"the cluster sent a malformed watch event: {exc}") from None

    async def peer_sets(self, registration: NodeRegistration) -> AsyncIterator[tuple[TunnelNetwork, PeerSet]]:
        """Register and watch forever, reconnecting with backoff (0.1 s doubling to 5 s); yields each snapshot."""
        delay = 0.1
        while True:
            try:
                network = await self.register(registration)
                async for peer_set in self.watch():
                    delay = 0.1
                    yield network, peer_set
            except ControlError as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
        if len(buffer) > MAX_LINE:
            raise ControlError(f"a watch event is longer than {MAX_LINE} bytes")


def _check(status: int, text: str, what: str) -> None:
    if status < 400:
        return
    if status in (401, 403):
        raise ControlError(
            f"the cluster refused the agent's {what} (HTTP {status}): the token in token_file must be an "
            "ACCESS_TOKEN credential whose user the admin policy allows on /agent/v1/ (see docs/client-access.md)"
        )
    raise ControlError(f"the cluster answered the {what} with HTTP {status}: {text[:300]}")
