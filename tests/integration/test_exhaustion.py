"""Connection exhaustion (real cluster process, real TLS): a client that opens connections and never finishes
its request head is cut after the header timeout, one address cannot hold more than its cap, and everyone
else (another address, the admin API) is served meanwhile."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RunningCluster, start_cluster, stop_cluster

pytestmark = pytest.mark.usefixtures("loopback_names")

HEADER_TIMEOUT = 3.0
IDLE_TIMEOUT = 3.0
CAP = 200
HALF_HEADERS = 300
SLACK = 1.5
"""Seconds allowed beyond a timeout (the server's timer, the loop, the test's own scheduling)."""

LIMITS = f"""
[limits]
header_timeout = {HEADER_TIMEOUT}
idle_timeout = {IDLE_TIMEOUT}
max_connections_per_ip = {CAP}
"""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RunningCluster]:
    running = await asyncio.to_thread(start_cluster, tmp_path / "home", extra_settings=LIMITS)
    try:
        yield running
    finally:
        await asyncio.to_thread(stop_cluster, running)


def _tls(cluster: RunningCluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))


async def _half_header(
    cluster: RunningCluster, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection that sends half a request head and stops; None if the server closed it at once."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            cluster.public_port,
            ssl=_tls(cluster),
            server_hostname=cluster.domain,
            local_addr=(source, 0),
        )
        writer.write(f"GET /oauth2/jwks HTTP/1.1\r\nHost: {cluster.domain}\r\nUser-Agent: slow".encode())
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        return None
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), None if it stayed open."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - started


async def _get(cluster: RunningCluster, url: str, source: str) -> int:
    connector = aiohttp.TCPConnector(ssl=_tls(cluster), local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url) as r,
    ):
        await r.read()
        return r.status


async def test_half_headers_are_cut_capped_per_address_and_do_not_lock_others_out(cluster: RunningCluster) -> None:
    jwks = cluster.public_url() + "/oauth2/jwks"
    opened = time.monotonic()
    attempts = await asyncio.gather(*(_half_header(cluster) for _ in range(HALF_HEADERS)))
    assert time.monotonic() - opened < HEADER_TIMEOUT / 2, "opening the connections took too long to test anything"
    connections = [c for c in attempts if c is not None]
    # (d) the cap: everything beyond CAP from this address was closed at once.
    states = await asyncio.gather(*(_closed_within(reader, 0.5) for reader, _ in connections))
    held = [c for c, closed in zip(connections, states, strict=True) if closed is None]
    assert len(held) == CAP, f"{len(held)} connections from one address stayed open, the cap is {CAP}"
    assert await _get(cluster, jwks, "127.0.0.2") == 200  # (b) another address is served
    # (c) the admin API answers
    async with aiohttp.ClientSession() as admin, admin.get(cluster.url + "/healthz", ssl=_tls(cluster)) as r:
        assert r.status == 200
    with pytest.raises((aiohttp.ClientError, ConnectionError)):  # this address is at its cap
        await _get(cluster, jwks, "127.0.0.1")
    assert time.monotonic() - opened < HEADER_TIMEOUT, "the checks above ran past the header timeout"
    # (a) the header timeout: the connections under the cap are cut HEADER_TIMEOUT after they were opened.
    remaining = HEADER_TIMEOUT + SLACK - (time.monotonic() - opened)
    cut = await asyncio.gather(*(_closed_within(reader, remaining) for reader, _ in held))
    assert all(c is not None for c in cut), f"{sum(c is None for c in cut)} half-header connections stayed open"
    last = time.monotonic() - opened
    assert HEADER_TIMEOUT - 0.1 <= last <= HEADER_TIMEOUT + SLACK, last
    print(f"{len(held)} half-header connections cut {last:.2f} s after opening (header_timeout {HEADER_TIMEOUT} s)")
    for _, writer in connections:
        writer.close()
    # The address's count went back down: it is served again.
    assert await _get(cluster, jwks, "127.0.0.1") == 200


async def test_a_trickled_header_is_cut_at_the_header_timeout(cluster: RunningCluster) -> None:
    connection = await _half_header(cluster)
    assert connection is not None
    reader, writer = connection
    opened = time.monotonic()
    closed_at = None
    for _ in range(int((HEADER_TIMEOUT + SLACK) / 0.25)):
        try:
            writer.write(b"w")
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            closed_at = time.monotonic() - opened
            break
        if await _closed_within(reader, 0.25) is not None:
            closed_at = time.monotonic() - opened
            break
    writer.close()
    assert closed_at is not None and HEADER_TIMEOUT - 0.5 <= closed_at <= HEADER_TIMEOUT + SLACK, closed_at


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(cluster: RunningCluster) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cluster.public_port, ssl=_tls(cluster), server_hostname=cluster.domain
    )
    # The head timeout only governs the first request: a slow second one waits for the idle timeout.
    await asyncio.sleep(HEADER_TIMEOUT / 2)
    writer.write(f"GET /oauth2/jwks HTTP/1.1\r\nHost: {cluster.domain}\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    answered = time.monotonic()
    closed = await _closed_within(reader, IDLE_TIMEOUT + SLACK + HEADER_TIMEOUT)
    writer.close()
    assert closed is not None, "the idle keep-alive connection stayed open"
    assert IDLE_TIMEOUT - 0.5 <= time.monotonic() - answered <= IDLE_TIMEOUT + SLACK + 0.5
