"""The cluster's side of client-based access, on loopback with the real cluster process (no root needed):
login/refresh/connect/services through the `wardgate` client's own API class, and the agent's watch stream."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.integration.gateway_env import create_credential
from wardgate.agent.wg import PrivateKey
from wardgate.client.errors import ClientError
from wardgate.client.user_api import SessionEnded, UserApi
from wardgate.cluster.resources.wire import NodeRegistration, NodeStatus, PeerSet, PeerStatus, TunnelNetwork, WatchEvent

USERS = [
    {"kind": "User", "metadata": {"name": "alice"}, "spec": {"type": "HUMAN", "groups": ["ops"]}},
    {"kind": "Group", "metadata": {"name": "ops"}, "spec": {}},
    {
        "kind": "Service",
        "metadata": {"name": "llm"},
        "spec": {"isPublic": False, "config": {"upstream": {"url": "http://127.0.0.1:9"}}},
    },
]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RunningCluster]:
    running = await asyncio.to_thread(start_cluster, tmp_path / "home")
    try:
        path = tmp_path / "users.yaml"
        path.write_text(yaml.safe_dump_all(USERS))
        running.ctl("apply", "-f", str(path), check=True)
        yield running
    finally:
        await asyncio.to_thread(stop_cluster, running)


def api(cluster: RunningCluster) -> UserApi:
    return UserApi(cluster.domain, f"127.0.0.1:{cluster.public_port}", str(cluster.home / "ca.crt"))


class Watcher:
    """The agent's view: register a node, then collect every snapshot the watch stream sends."""

    def __init__(self, cluster: RunningCluster, token: str) -> None:
        self.cluster = cluster
        self.token = token
        self.snapshots: list[tuple[float, PeerSet]] = []

    async def register(self, http: aiohttp.ClientSession, key: PrivateKey) -> tuple[int, str]:
        body = NodeRegistration(wg_public_key=key.public_key().to_base64(), listen_port=51820).model_dump_json()
        async with http.put(
            f"{self.cluster.url}/agent/v1/nodes/node-1",
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        ) as response:
            return response.status, await response.text()

    async def run(self, http: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with http.get(f"{self.cluster.url}/agent/v1/watch", headers=headers) as response:
            assert response.status == 200
            async for line in response.content:
                event = WatchEvent.model_validate_json(line)
                if event.peer_set is not None:
                    self.snapshots.append((time.perf_counter(), event.peer_set))

    async def until(self, condition, within: float = 5.0) -> PeerSet:
        deadline = time.monotonic() + within
        while True:
            if self.snapshots and condition(self.snapshots[-1][1]):
                return self.snapshots[-1][1]
            assert time.monotonic() < deadline, f"no matching snapshot; last: {self.snapshots[-1:]}"
            await asyncio.sleep(0.005)


async def test_login_connect_watch_and_revoke(cluster: RunningCluster) -> None:
    token = create_credential(cluster, "alice-device", "alice", "auth-token")
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        watcher = Watcher(cluster, cluster.token)
        node_key = PrivateKey.generate()
        status, text = await watcher.register(http, node_key)
        assert status == 200, text
        network = TunnelNetwork.model_validate_json(text)
        assert (network.gateway_ipv4, network.dns_zone) == ("100.64.0.1", f"local.{cluster.domain}")
        async with asyncio.TaskGroup() as tasks:
            stream = tasks.create_task(watcher.run(http))
            first = await watcher.until(lambda s: True)
            assert first.peers == [] and first.services == ["llm"]

            async with api(cluster) as client:
                grant = await client.login(token)
                assert grant.user == "alice" and grant.refresh_token
                client.token = grant.access_token
                client_key = PrivateKey.generate().public_key().to_base64()
                answer = await client.connect(client_key)
                assert answer.tunnel_ipv4 == "100.64.0.2" and answer.network == network
                assert [(n.name, n.wg_public_key) for n in answer.nodes] == [
                    ("node-1", node_key.public_key().to_base64())
                ]
                peers = (await watcher.until(lambda s: len(s.peers) == 1)).peers
                assert peers[0].wg_public_key == client_key
                assert peers[0].allowed_ips == [f"{answer.tunnel_ipv4}/32", f"{answer.tunnel_ipv6}/128"]
                services = await client.services()
                assert [(s.name, s.url, s.is_public) for s in services.services] == [
                    ("llm", f"http://llm.local.{cluster.domain}", False)
                ]

                refreshed = await client.refresh(grant.refresh_token)
                assert refreshed.refresh_token is None and refreshed.session == grant.session
                client.token = grant.refresh_token  # a refresh token is not an access token
                with pytest.raises(SessionEnded):
                    await client.session()
                client.token = refreshed.access_token
                assert (await client.session()).tunnel_ipv4 == answer.tunnel_ipv4

                await client.disconnect()
                await watcher.until(lambda s: s.peers == [])
                await client.connect(client_key)
                await watcher.until(lambda s: len(s.peers) == 1)

                started = time.perf_counter()
                async with http.delete(
                    f"{cluster.url}/api/v1/sessions/{grant.session}",
                    headers={"Authorization": f"Bearer {cluster.token}"},
                ) as deleted:
                    assert deleted.status == 200
                await watcher.until(lambda s: s.peers == [])
                gone = watcher.snapshots[-1][0] - started
                assert gone < 1.0, f"revocation reached the watch stream after {gone:.3f} s"
                with pytest.raises(SessionEnded, match="revoked"):
                    await client.session()
                with pytest.raises(ClientError, match="login refused"):
                    await client.login(token.replace(token[-6:], "AAAAAA"))
            stream.cancel()


async def test_only_auth_tokens_log_in_and_agents_need_permission(cluster: RunningCluster) -> None:
    access = create_credential(cluster, "alice-pat", "alice", "access-token")
    async with api(cluster) as client:
        with pytest.raises(ClientError, match="login refused"):
            await client.login(access)
        client.token = access  # a long-lived ACCESS_TOKEN is not a CLIENT session
        with pytest.raises(SessionEnded, match="CLIENT session"):
            await client.connect(PrivateKey.generate().public_key().to_base64())
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        status, _ = await Watcher(cluster, access).register(http, PrivateKey.generate())
        assert status == 403  # the admin policy decides who may act as an agent
        token = create_credential(cluster, "alice-device", "alice", "auth-token")
        async with api(cluster) as client:
            client.token = (await client.login(token)).access_token
            with pytest.raises(ClientError, match="no node agent has registered"):
                await client.connect(PrivateKey.generate().public_key().to_base64())


async def test_unreachable_cluster_says_what_to_check(tmp_path: Path) -> None:
    async with UserApi("wardgate.test", "127.0.0.1:9") as client:
        with pytest.raises(ClientError, match=r"cannot reach the cluster at https://wardgate.test:9 \(via 127.0.0.1\)"):
            await client.login("wgt.x.y")


async def test_agent_peer_reports_show_in_metrics(cluster: RunningCluster) -> None:
    context = ssl.create_default_context(cafile=str(cluster.home / "ca.crt"))
    peer = PrivateKey.generate().public_key().to_base64()
    handshake = datetime.now(UTC) - timedelta(seconds=42)
    report = NodeStatus(
        peers=[PeerStatus(public_key=peer, session="alice-abc", last_handshake=handshake, rx_bytes=1234, tx_bytes=99)]
    )
    headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.put(
            f"{cluster.url}/agent/v1/nodes/node-1/status", data=report.model_dump_json(), headers=headers
        ) as response:
            assert response.status == 200, await response.text()
        async with http.put(
            f"{cluster.url}/agent/v1/nodes/node-1/status", data=b"{not json", headers=headers
        ) as response:
            assert response.status == 422
        async with http.get(f"{cluster.url}/metrics") as response:
            text = await response.text()
    assert 'wardgate_wireguard_peers{node="node-1"} 1.0' in text
    age_line = next(line for line in text.splitlines() if line.startswith("wardgate_wireguard_handshake_age_seconds{"))
    assert 'peer="alice-abc"' in age_line and 42 <= float(age_line.split()[-1]) < 60
    assert 'wardgate_wireguard_bytes{direction="rx",node="node-1",peer="alice-abc"} 1234.0' in text
