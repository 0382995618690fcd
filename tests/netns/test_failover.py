"""Client-based access survives the death of the node a client uses: two nodes on one PostgreSQL, as root.

    back: PostgreSQL + the fake provider on 172.31.47.1 ──veth── a: wardgate-cluster node-a, its agent, wireguard-go
                                                       ──veth── b: wardgate-cluster node-b, its agent, wireguard-go
    c (alice): veths to a and b; `wardgate login --address <a>`, `wardgate connect --detach` (wireguard-go)

Both agents install alice's peer (the peer set is the cluster's, from the shared store). Every process in
namespace a is SIGKILLed; the client's failover notices (probes through the tunnel) and moves its peer to
node-b; the test measures from the kill until a request through the tunnel succeeds again. `make bench-ha`
runs this test (as root) and prints its number.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.conftest import BIN
from tests.netns.lab import Lab, netns_socket
from tests.netns.test_client_access import (
    DOMAIN,
    GATEWAY,
    ZONE,
    Client,
    Node,
    _credential,
    _wait_port,
    checked,
    resources,
    run,
    socket_exists,
    wait_for,
)
from tests.postgres_server import PG_BIN, PostgresServer

pytestmark = pytest.mark.netns

BACK = "172.31.47.1"
SECRET = "provider-secret-failover"
FAILOVER_BOUND = 30.0
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]}


class NamespacedPostgres(PostgresServer):
    """The test server, started inside a namespace on `address`, open to the lab's 172.31/16 addresses."""

    def start_in(self, netns: str, address: str) -> None:
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 172.31.0.0/16 trust\n")
        log = (self.root / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [
                "ip", "netns", "exec", netns, "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                str(PG_BIN / "postgres"), "-D", str(self.data), "-h", address, "-p", str(self.port),
                "-k", str(self.sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while run(
            "ip", "netns", "exec", netns, str(PG_BIN / "pg_isready"), "-h", address, "-p", str(self.port)
        ).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("postgres did not start:\n" + (self.root / "postgres.log").read_text()[-3000:])
            time.sleep(0.05)


@dataclass
class TwoNodes:
    a: Node
    b: Node
    alice: Client
    dsn: str


def _agent_config(node: Node, name: str, endpoint: str, token_file: Path) -> None:
    node.agent_config.write_text(
        f'node = "{name}"\ninterface = "{node.interface}"\nlisten_port = 51820\nendpoint = "{endpoint}"\n'
        f'state_dir = "{node.home.name}-agent-state"\nresync_interval = 1.0\nreport_interval = 0.5\n\n[cluster]\n'
        f'url = "https://127.0.0.1:9443"\nca_file = "{node.home / "ca.crt"}"\ntoken_file = "{token_file}"\n'
    )


def _cluster(node: Node, *args: str) -> str:
    return checked(run("ip", "netns", "exec", node.netns, str(BIN / "wardgate-cluster"), *args, timeout=120))


@pytest_asyncio.fixture
async def two_nodes(lab: Lab, tmp_path: Path) -> AsyncIterator[TwoNodes]:
    ns = {role: lab.namespace() for role in ("back", "a", "b", "c")}
    lab.veth(ns["back"], ns["a"], 41)
    lab.veth(ns["back"], ns["b"], 42)
    lab.veth(ns["a"], ns["c"], 43)
    lab.veth(ns["b"], ns["c"], 44)
    checked(run("ip", "-n", ns["back"], "addr", "add", f"{BACK}/32", "dev", "lo"))
    checked(run("ip", "-n", ns["a"], "route", "add", f"{BACK}/32", "via", "172.31.41.1"))
    checked(run("ip", "-n", ns["b"], "route", "add", f"{BACK}/32", "via", "172.31.42.1"))
    logs = tmp_path / "logs"
    logs.mkdir()
    a = Node(ns["a"], lab.interface_name(), tmp_path / "home-a", tmp_path / "agent-a.toml", logs)
    b = Node(ns["b"], lab.interface_name(), tmp_path / "home-b", tmp_path / "agent-b.toml", logs)
    alice = Client("alice", ns["c"], lab.interface_name(), tmp_path / "alice", "172.31.43.1")
    database = NamespacedPostgres()
    try:
        database.start_in(ns["back"], BACK)
        psql = [str(PG_BIN / "psql"), "-X", "-h", BACK, "-p", str(database.port), "-U", "postgres"]
        checked(run("ip", "netns", "exec", ns["back"], *psql, "-c", "CREATE DATABASE wardgate"))
        dsn = f"postgresql://postgres@{BACK}:{database.port}/wardgate"
        a.start(
            "provider", str(BIN / "python"), "-m", "tests.fakes.openai_provider", "--host", BACK, "--port", "8000",
            "--api-key", SECRET, netns=ns["back"],
        )  # fmt: skip
        listen = ("--admin-listen", "127.0.0.1:9443", "--public-listen", "0.0.0.0:443")
        _cluster(a, "init", "--home", str(a.home), "--domain", DOMAIN, "--store", dsn, "--node-name", "node-a", *listen)
        _cluster(b, "join", "--home", str(b.home), "--store", dsn, "--store-key-file", str(a.home / "store.key"),
                 "--node-name", "node-b", *listen)  # fmt: skip
        shutil.copy(a.home / "admin.token", b.home / "admin.token")
        for node in (a, b):
            with (node.home / "cluster.toml").open("a") as settings:
                settings.write(f'\n[tunnel]\ninterface = "{node.interface}"\n')
            process = node.start("cluster", str(BIN / "wardgate-cluster"), "run", "--home", str(node.home))
            await _wait_port(node.netns, "127.0.0.1", 9443, process, node)
        manifest = tmp_path / "resources.yaml"
        manifest.write_text(yaml.safe_dump_all(resources(f"http://{BACK}:8000/v1")))
        a.ctl("apply", "-f", str(manifest))
        a.ctl("create", "secret", "provider-key", "--value", SECRET)
        token = _credential(a, "alice-laptop", "alice", "auth-token")
        agent_token = tmp_path / "agent.token"
        agent_token.write_text(_credential(a, "node-agent", "node-agent", "access-token") + "\n")
        _agent_config(a, "node-a", "172.31.43.1:51820", agent_token)
        _agent_config(b, "node-b", "172.31.44.1:51820", agent_token)
        for node in (a, b):
            node.start_agent()
        await wait_for(
            lambda: all(socket_exists(n.interface) for n in (a, b)) and "node-b" in a.ctl("get", "nodes"),
            30,
            "both agents registered",
        )
        checked(
            alice.wardgate(
                "login", "--domain", DOMAIN, "--auth-token", token, "--ca", str(a.home / "ca.crt"),
                "--address", alice.node_address,
            )
        )  # fmt: skip
        yield TwoNodes(a, b, alice, dsn)
    except BaseException:
        print(a.dump())
        raise
    finally:
        alice.wardgate("disconnect", timeout=60)
        a.stop_all()
        b.stop_all()
        database.close()
        for netns in ns.values():
            shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)


def tunnel_chat(netns: str, timeout: float) -> int | None:
    """POST a chat completion to llm.<zone> through the client's tunnel (plain HTTP to the gateway address);
    the status, or None when nothing answered."""
    body = json.dumps(CHAT).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: llm.{ZONE}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((GATEWAY, 80))
            sock.sendall(head + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            return None
    status_line = answer.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) > 1 else None


def _kill_namespace(netns: str) -> None:
    """SIGKILL every process of the namespace: the node dies as a machine would (no clean shutdown)."""
    for pid in checked(run("ip", "netns", "pids", netns)).split():
        os.kill(int(pid), signal.SIGKILL)


async def test_a_client_moves_to_the_other_node_when_its_node_dies(two_nodes: TwoNodes) -> None:
    a, b, alice = two_nodes.a, two_nodes.b, two_nodes.alice
    out = checked(alice.wardgate("connect", "--detach", "--interface", alice.interface))
    print(f"\n$ wardgate connect --detach\n{out}")
    connection = alice.connection()
    assert connection is not None and connection["node"] == "node-a", connection
    assert connection["endpoint"] == "172.31.43.1:51820"

    # Each node has its own WireGuard key, and each node's agent installed alice's peer.
    async def on_both() -> bool:
        try:
            peers_a, peers_b = await a.peers(), await b.peers()
        except Exception:
            return False
        return len(peers_a) == 1 and set(peers_a) == set(peers_b)

    await wait_for(on_both, 10, "alice's peer on both nodes")
    (peer,) = (await b.peers()).values()
    assert {str(n) for n in peer.allowed_ips} == {f"{connection['tunnel_ipv4']}/32", f"{connection['tunnel_ipv6']}/128"}
    nodes = yaml.safe_load_all(a.ctl("get", "nodes", "-o", "yaml"))
    keys = {n["metadata"]["name"]: n["spec"]["wgPublicKey"] for n in nodes if n}
    assert set(keys) == {"node-a", "node-b"} and keys["node-a"] != keys["node-b"], keys

    assert tunnel_chat(alice.netns, 5) == 200
    answer = alice.sdk("through node-a")
    assert answer == {"ok": True, "content": "echo: through node-a"}, answer
    assert any(e.get("user") == "alice" and e.get("listener") == "tunnel" for e in a.access_log())

    _kill_namespace(a.netns)
    killed = time.perf_counter()
    recovered = None
    while time.perf_counter() - killed < FAILOVER_BOUND + 30:
        if tunnel_chat(alice.netns, 1.0) == 200:
            recovered = time.perf_counter() - killed
            break
        time.sleep(0.2)
    print(f"\nclient failover: node-a killed; requests through the tunnel succeed via node-b after {recovered:.1f} s")
    assert recovered is not None and recovered < FAILOVER_BOUND, f"{recovered} s\n{alice.config}\n{b.dump()}"

    connection = alice.connection()
    assert connection is not None and connection["node"] == "node-b", connection
    assert connection["endpoint"] == "172.31.44.1:51820" and connection["moved_from"] == "node-a"
    status = alice.wardgate("status", timeout=60)
    print(f"\n$ wardgate status\n{status.stdout}")
    assert "node node-b at 172.31.44.1:51820" in status.stdout and "moved from node node-a" in status.stdout
    answer = alice.sdk("through node-b")  # names resolve through node-b's DNS now
    assert answer == {"ok": True, "content": "echo: through node-b"}, answer
    entries = [e for e in b.access_log() if e.get("user") == "alice" and e.get("listener") == "tunnel"]
    assert entries and entries[-1]["status"] == 200
    assert entries[-1]["remote"] in (connection["tunnel_ipv4"], connection["tunnel_ipv6"])
