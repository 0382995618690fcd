"""`make bench-ha`: two nodes (2 workers each) over one PostgreSQL, as tests/integration/test_ha.py builds them.

Prints the propagation of revocations and new credentials to every worker of both nodes (p50, p99, max over
--rounds), then two failovers: PostgreSQL restarted (how long until both nodes are ready and take writes
again) and `kill -9` of a node (how long a client that tries the next address, as with DNS round robin or a
TCP load balancer, goes without an answer). As root, last: a WireGuard client's move to the other node when its
node dies (tests/netns/test_failover.py, namespaces and wireguard-go).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.conftest import RunningCluster, stop_cluster  # noqa: E402
from tests.fakes.openai_provider import FakeOpenAI  # noqa: E402
from tests.integration import ha_env  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

KEY = "sk-bench-ha"
_resolve = socket.getaddrinfo


def _loopback(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, str) and host.endswith(ha_env.DOMAIN):
        host = "127.0.0.1"
    return _resolve(host, *args, **kwargs)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def _propagation(nodes: list[RunningCluster], rounds: int) -> None:
    created, revoked = [], []
    for round_ in range(rounds):
        create_delay, revoke_delay = await ha_env.revocation_round(nodes, round_, checks=1)
        created.append(create_delay)
        revoked.append(revoke_delay)
    for label, values in (("revocation", revoked), ("new credential", created)):
        print(
            f"{label:15} every worker of both nodes: p50 {_ms(ha_env.percentile(values, 50))}  "
            f"p99 {_ms(ha_env.percentile(values, 99))}  max {_ms(max(values))}  ({rounds} rounds)"
        )


async def _token(nodes: list[RunningCluster], name: str) -> str:
    status, created = await ha_env.call(
        nodes[0], "POST", nodes[0].url + "/api/v1/credentials",
        json={"name": name, "user": ha_env.BOT, "type": "oauth2"}, headers=ha_env.admin_headers(nodes[0]),
    )  # fmt: skip
    assert status == 200 and created is not None, (status, created)
    token = await ha_env.token_for(nodes[0], created["clientId"], created["clientSecret"])
    await ha_env.until_applied(nodes, time.perf_counter())
    return token


async def _postgres_restart(nodes: list[RunningCluster], server: PostgresServer) -> None:
    token = await _token(nodes, "bench-pg")
    await asyncio.to_thread(server.stop)
    served = [await ha_env.chat_status(n, token) for n in nodes for _ in range(20)]
    status, _ = await ha_env.call(
        nodes[1], "POST", nodes[1].url + "/api/v1/credentials",
        json={"name": "bench-down", "user": ha_env.BOT, "type": "oauth2"}, headers=ha_env.admin_headers(nodes[1]),
    )  # fmt: skip
    await asyncio.to_thread(server.start)
    back = time.perf_counter()
    for node in nodes:
        await asyncio.to_thread(ha_env.wait_ready, node, 60)
    ready = time.perf_counter() - back
    while True:
        status_after, _ = await ha_env.call(
            nodes[1], "POST", nodes[1].url + "/api/v1/credentials",
            json={"name": "bench-after", "user": ha_env.BOT, "type": "oauth2"}, headers=ha_env.admin_headers(nodes[1]),
        )  # fmt: skip
        if status_after == 200:
            break
        await asyncio.sleep(0.01)
    writable = time.perf_counter() - back
    ok = served.count(200)
    print(
        f"postgres restart: {ok}/{len(served)} requests served from the caches while down, writes {status} while "
        f"down; after it is back: both nodes ready in {_ms(ready)}, a write succeeds after {_ms(writable)}"
    )


async def _kill_node(nodes: list[RunningCluster]) -> None:
    token = await _token(nodes, "bench-kill")
    pids = ha_env.workers_of(nodes[0])
    killed = time.perf_counter()
    nodes[0].process.send_signal(signal.SIGKILL)
    for pid in pids:
        ha_env.kill(pid)
    nodes[0].process.wait()
    # A client that tries the nodes' addresses in order (round robin DNS, or a TCP balancer's retry).
    failed = 0
    while True:
        for node in nodes:
            try:
                if await ha_env.chat_status(node, token) == 200:
                    break
            except OSError:
                failed += 1
        else:
            continue
        break
    gap = time.perf_counter() - killed
    print(f"kill -9 of node a: the next answer came from node b after {_ms(gap)} ({failed} connection refused)")


def _client_failover() -> None:
    """The netns failover test's measurement (root only: namespaces, wireguard-go)."""
    if os.geteuid() != 0:
        print("client failover: not measured (needs root: tests/netns/test_failover.py)")
        return
    test = "tests/netns/test_failover.py"
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    found = [line for line in result.stdout.splitlines() if line.startswith("client failover:")]
    print(found[-1] if found and result.returncode == 0 else f"client failover: {test} failed\n{result.stdout[-4000:]}")


async def main(rounds: int) -> None:
    socket.getaddrinfo = _loopback  # type: ignore[assignment]
    server = PostgresServer()
    server.start()
    root = Path(tempfile.mkdtemp(prefix="wardgate-bench-ha-"))
    nodes: list[RunningCluster] = []
    try:
        async with FakeOpenAI(api_key=KEY).serve() as upstream:
            dsn = server.create_database()
            await asyncio.to_thread(ha_env.init_first, root / "a", dsn)
            await asyncio.to_thread(ha_env.join, root / "b", dsn, root / "a", "node-b")
            nodes = [await asyncio.to_thread(ha_env.run, root / h, 2) for h in ("a", "b")]
            (root / "docs.yaml").write_text(yaml.safe_dump_all(ha_env.manifests(upstream)))
            nodes[0].ctl("apply", "-f", str(root / "docs.yaml"), check=True)
            nodes[0].ctl("create", "secret", "upstream-key", "--value", KEY, check=True)
            await _propagation(nodes, rounds)
            await _postgres_restart(nodes, server)
            await _kill_node(nodes)
    finally:
        for node in nodes:
            if node.process.poll() is None:
                stop_cluster(node)
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
    _client_failover()
