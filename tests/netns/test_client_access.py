"""Client-based access end to end, as root, across network namespaces: the real processes, nothing faked but
the LLM provider.

    c1 (alice) ──veth──┐                      ┌──veth── up: python -m tests.fakes.openai_provider
    c2 (bob)   ──veth──┤ node: wardgate-cluster, wardgate-agent, wireguard-go
                       └──────────────────────┘
    c1/c2: `wardgate login`, `wardgate connect --detach` (wireguard-go), the openai SDK on
    http://llm.local.<domain> with no API key; the provider demands its secret, which only the gateway has.

Every address used lives inside namespaces this test creates (172.31.x on the veths, the tunnel ranges on
the WireGuard interfaces) or on their loopback. Namespaces, interfaces, processes and /etc/netns files are
removed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.conftest import BIN, REPO
from tests.netns.lab import Lab, netns_socket
from wardgate.agent.wg import DeviceConfig, PeerConfig, PrivateKey, PublicKey
from wardgate.agent.wg.uapi import UapiDevice

pytestmark = pytest.mark.netns

DOMAIN = "wardgate.test"
ZONE = f"local.{DOMAIN}"
GATEWAY = "100.64.0.1"
PROVIDER_SECRET = "provider-secret-sk-7"
C1_V, C2_V, UP_V = 22, 23, 24  # veth subnets: 172.31.<n>.1 is the node's side
ETH_P_ALL = 0x0003

SDK = r"""
import json, sys, openai
# The SDK insists on some key; it holds no secret (the gateway drops it and injects the provider's).
client = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0, timeout=float(sys.argv[3]))
try:
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": sys.argv[2]}])
    print(json.dumps({"ok": True, "content": answer.choices[0].message.content}))
except openai.APIStatusError as e:
    print(json.dumps({"ok": False, "status": e.status_code, "body": e.body}))
except openai.APIConnectionError as e:
    print(json.dumps({"ok": False, "status": None, "error": repr(e.__cause__ or e)}))
"""


def resources(upstream: str) -> list[dict[str, Any]]:
    agent_only = 'ctx.service.metadata.name == "wardgate-admin" && ctx.request.http.path.startsWith("/agent/v1/")'
    return [
        {"kind": "Group", "metadata": {"name": "ops"}, "spec": {}},
        {"kind": "Group", "metadata": {"name": "dev"}, "spec": {}},
        {"kind": "User", "metadata": {"name": "alice"}, "spec": {"type": "HUMAN", "groups": ["dev", "ops"]}},
        {"kind": "User", "metadata": {"name": "bob"}, "spec": {"type": "HUMAN", "groups": ["dev"]}},
        {
            "kind": "User",
            "metadata": {"name": "node-agent"},
            "spec": {
                "type": "WORKLOAD",
                "authorization": {
                    "inlinePolicies": [
                        {"spec": {"rules": [{"effect": "ALLOW", "scope": "ADMIN", "condition": {"match": agent_only}}]}}
                    ]
                },
            },
        },
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {
                "mode": "HTTP",
                "isPublic": False,
                "config": {
                    "upstream": {"url": upstream},
                    "http": {"auth": {"bearer": {"fromSecret": "provider-key"}}},
                },
                "authorization": {
                    "inlinePolicies": [
                        {
                            "name": "ops-only",
                            "spec": {
                                "rules": [
                                    {
                                        "name": "ops",
                                        "effect": "ALLOW",
                                        "condition": {"match": 'ctx.user.spec.groups.hasAny("ops")'},
                                    }
                                ]
                            },
                        }
                    ]
                },
            },
        },
    ]


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class Client:
    name: str
    netns: str
    interface: str
    config: Path
    node_address: str
    tunnel_ipv4: str = ""
    tunnel_ipv6: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_CONFIG_HOME": str(self.config)}

    def wardgate(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.netns, str(BIN / "wardgate"), *args, env=self.env, timeout=timeout)

    def connection(self) -> dict[str, Any] | None:
        path = self.config / "wardgate" / "connection.json"
        return json.loads(path.read_text()) if path.exists() else None

    def sdk(self, question: str, timeout: float = 20) -> dict[str, Any]:
        result = run(
            "ip", "netns", "exec", self.netns, str(BIN / "python"), "-c", SDK, f"http://llm.{ZONE}/v1", question,
            str(timeout), timeout=timeout + 30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer


@dataclass
class Node:
    netns: str
    interface: str
    home: Path
    agent_config: Path
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "WARDGATE_CONFIG": str(self.home / "wardgatectl.toml")}

    def ctl(self, *args: str) -> str:
        return checked(run("ip", "netns", "exec", self.netns, str(BIN / "wardgatectl"), *args, env=self.env))

    def start(self, name: str, *command: str, netns: str | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns or self.netns, *command], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        self.processes[name] = process
        return process

    def start_agent(self) -> subprocess.Popen[bytes]:
        return self.start("agent", str(BIN / "wardgate-agent"), "--config", str(self.agent_config))

    def access_log(self) -> list[dict[str, Any]]:
        path = self.home / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def peers(self) -> dict[PublicKey, Any]:
        return {peer.public_key: peer for peer in (await UapiDevice(self.interface).state()).peers}

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def dump(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(self.logs.glob("*.log")))


def _metrics(node: Node) -> str:
    script = (
        "import ssl, sys, urllib.request; ctx = ssl.create_default_context(cafile=sys.argv[1]); "
        "print(urllib.request.urlopen('https://127.0.0.1:9443/metrics', context=ctx, timeout=5).read().decode())"
    )
    return checked(run("ip", "netns", "exec", node.netns, sys.executable, "-c", script, str(node.home / "ca.crt")))


async def wait_for(condition: Any, within: float, what: str, step: float = 0.005) -> float:
    """Poll `condition` (sync or async) until true; returns the seconds it took."""
    started = time.perf_counter()
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.perf_counter() - started
        if time.perf_counter() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(step)


def tcp_open(netns: str, host: str, port: int, device: str | None = None, timeout: float = 2.0) -> str:
    """'open', 'refused' or 'timeout' for a TCP connect from `netns` (optionally forced out of `device`)."""
    with netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "open"


def veth_of(netns: str, address: str) -> tuple[str, str]:
    """(interface name, MAC) of the interface holding `address` in `netns`."""
    for link in json.loads(checked(run("ip", "-n", netns, "-j", "addr", "show"))):
        if any(info.get("local") == address for info in link.get("addr_info", [])):
            return link["ifname"], link["address"]
    raise AssertionError(f"no interface with {address} in {netns}")


class Sniffer:
    """Every IPv4 packet arriving on `interface` in `netns`, decoded by scapy, collected on a thread."""

    def __init__(self, netns: str, interface: str) -> None:
        self.sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.bind((interface, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.packets: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, (_, protocol, packet_type, *_) = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if protocol == 0x0800 and packet_type != socket.PACKET_OUTGOING:
                self.packets.append(IP(data))

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.packets


@dataclass
class Setup:
    node: Node
    alice: Client
    bob: Client
    upstream_ns: str
    tokens: dict[str, str]


def _credential(node: Node, name: str, user: str, kind: str, *extra: str) -> str:
    out = node.ctl("create", "credential", name, "--user", user, "--type", kind, *extra)
    return next(line.split(": ", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("token:"))


async def _wait_port(netns: str, host: str, port: int, process: subprocess.Popen[bytes], node: Node) -> None:
    deadline = time.monotonic() + 30
    while tcp_open(netns, host, port, timeout=0.5) != "open":
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {host}:{port} in {netns}\n{node.dump()}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def setup(lab: Lab, tmp_path: Path) -> AsyncIterator[Setup]:
    names = {role: lab.namespace() for role in ("node", "c1", "c2", "up")}
    lab.veth(names["node"], names["c1"], C1_V)
    lab.veth(names["node"], names["c2"], C2_V)
    lab.veth(names["node"], names["up"], UP_V)
    logs = tmp_path / "logs"
    logs.mkdir()
    node = Node(names["node"], lab.interface_name(), tmp_path / "home", tmp_path / "agent.toml", logs)
    clients = [
        Client("alice", names["c1"], lab.interface_name(), tmp_path / "alice", f"172.31.{C1_V}.1"),
        Client("bob", names["c2"], lab.interface_name(), tmp_path / "bob", f"172.31.{C2_V}.1"),
    ]
    try:
        checked(
            run(
                str(BIN / "wardgate-cluster"), "init", "--home", str(node.home), "--domain", DOMAIN,
                "--admin-listen", "127.0.0.1:9443", "--public-listen", "0.0.0.0:443",
            )
        )  # fmt: skip
        with (node.home / "cluster.toml").open("a") as settings:
            settings.write(f'\n[tunnel]\ninterface = "{node.interface}"\n')
        upstream = node.start(
            "provider", str(BIN / "python"), "-m", "tests.fakes.openai_provider", "--host", f"172.31.{UP_V}.2",
            "--port", "8000", "--api-key", PROVIDER_SECRET, netns=names["up"],
        )  # fmt: skip
        cluster = node.start("cluster", str(BIN / "wardgate-cluster"), "run", "--home", str(node.home))
        await _wait_port(node.netns, "127.0.0.1", 9443, cluster, node)
        await _wait_port(names["up"], f"172.31.{UP_V}.2", 8000, upstream, node)
        manifest = tmp_path / "resources.yaml"
        manifest.write_text(yaml.safe_dump_all(resources(f"http://172.31.{UP_V}.2:8000/v1")))
        node.ctl("apply", "-f", str(manifest))
        node.ctl("create", "secret", "provider-key", "--value", PROVIDER_SECRET)
        tokens = {
            "alice": _credential(node, "alice-laptop", "alice", "auth-token"),
            "bob": _credential(node, "bob-laptop", "bob", "auth-token"),
            "agent": _credential(node, "node-agent", "node-agent", "access-token"),
        }
        (tmp_path / "agent.token").write_text(tokens["agent"] + "\n")
        node.agent_config.write_text(
            f'node = "node-1"\ninterface = "{node.interface}"\nlisten_port = 51820\nstate_dir = "agent-state"\n'
            "resync_interval = 1.0\nreport_interval = 0.5\n\n[cluster]\n"
            f'url = "https://127.0.0.1:9443"\nca_file = "{node.home / "ca.crt"}"\ntoken_file = "agent.token"\n'
        )
        node.start_agent()
        await wait_for(
            lambda: socket_exists(node.interface) and "node-1" in node.ctl("get", "nodes"), 20, "agent registered"
        )
        yield Setup(node, clients[0], clients[1], names["up"], tokens)
    except BaseException:
        print(node.dump())
        raise
    finally:
        for client in clients:
            client.wardgate("disconnect", timeout=30)
        node.stop_all()
        for netns in names.values():
            shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)


def socket_exists(interface: str) -> bool:
    return Path(f"/var/run/wireguard/{interface}.sock").exists()


def socket_live(interface: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(f"/var/run/wireguard/{interface}.sock")
        except OSError:
            return False
        return True


def _wireguard_go_pid(node: Node) -> int:
    for pid in checked(run("ip", "netns", "pids", node.netns)).split():
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(part.endswith(b"wireguard-go") for part in command) and node.interface.encode() in command:
                return int(pid)
    raise AssertionError(f"no wireguard-go for {node.interface} in {node.netns}")


def _send_frames(netns: str, interface: str, frames: list[bytes]) -> None:
    with netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        for frame in frames:
            sock.send(frame)


def _send_ip(netns: str, packets: list[Any]) -> None:
    """Send raw IPv4 packets from `netns` as they are (IP_HDRINCL): the kernel routes them, the source is ours."""
    with netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for packet in packets:
            sock.sendto(bytes(packet), (packet[IP].dst, 0))


def _from_gateway_to(packets: list[Any], ports: set[int]) -> list[Any]:
    found = []
    for packet in packets:
        layer = packet.getlayer(TCP) or packet.getlayer(UDP)
        if packet[IP].src == GATEWAY and layer is not None and layer.dport in ports:
            found.append(packet)
    return found


def _login(client: Client, setup: Setup, token: str) -> None:
    checked(
        client.wardgate(
            "login", "--domain", DOMAIN, "--auth-token", token, "--ca", str(setup.node.home / "ca.crt"),
            "--address", client.node_address,
        )
    )  # fmt: skip


def _connect(client: Client) -> dict[str, Any]:
    out = checked(client.wardgate("connect", "--detach", "--interface", client.interface))
    print(f"\n$ wardgate connect --detach  # {client.name}\n{out}")
    assert "connected:" in out, out
    connection = client.connection()
    assert connection is not None
    client.tunnel_ipv4, client.tunnel_ipv6 = connection["tunnel_ipv4"], connection["tunnel_ipv6"]
    return connection


def _resolv_conf(client: Client) -> Path:
    return Path("/etc/netns") / client.netns / "resolv.conf"


async def test_private_service_over_wireguard(setup: Setup) -> None:
    node, alice, bob = setup.node, setup.alice, setup.bob
    numbers: dict[str, float] = {}

    # Login, then both clients connect at the same moment: they race for addresses.
    for client in (alice, bob):
        _login(client, setup, setup.tokens[client.name])
        assert (client.config / "wardgate" / "login.json").stat().st_mode & 0o777 == 0o600
    connections = await asyncio.gather(*(asyncio.to_thread(_connect, c) for c in (alice, bob)))
    assert connections[0]["tunnel_ipv4"] != connections[1]["tunnel_ipv4"]
    assert connections[0]["tunnel_ipv6"] != connections[1]["tunnel_ipv6"]
    assert {c["resolver"]["kind"] for c in connections} == {"netns"}
    assert f"nameserver {GATEWAY}" in _resolv_conf(alice).read_text()
    await wait_for(lambda: _count_peers(node, 2), 5, "both peers on the node")
    keys = set(await node.peers())

    # The SDK in alice's namespace: a private name, plain HTTP in the tunnel, no API key.
    answer = alice.sdk("hello over wireguard")
    assert answer == {"ok": True, "content": "echo: hello over wireguard"}, answer
    entry = [e for e in node.access_log() if e.get("listener") == "tunnel" and e.get("user") == "alice"][-1]
    assert entry["status"] == 200 and entry["sessionType"] == "CLIENT" and entry["service"] == "llm"
    assert entry["remote"] in (alice.tunnel_ipv4, alice.tunnel_ipv6) and entry["decision"]["effect"] == "ALLOW"
    denied = bob.sdk("let me in")
    assert denied["ok"] is False and denied["status"] == 403, denied
    entry = [e for e in node.access_log() if e.get("listener") == "tunnel" and e.get("user") == "bob"][-1]
    assert entry["status"] == 403 and entry["decision"]["effect"] == "DENY"
    status = alice.wardgate("status")
    print(f"\n$ wardgate status\n{status.stdout}")
    assert status.returncode == 0, status.stderr
    assert "connected since" in status.stdout and "last handshake" in status.stdout
    assert f"http://llm.{ZONE}" in status.stdout

    # The agent reports its device's peers; the cluster's /metrics shows them.
    await wait_for(lambda: 'wardgate_wireguard_peers{node="node-1"} 2.0' in _metrics(node), 10, "peer metrics", 0.2)
    assert "wardgate_wireguard_handshake_age_seconds{" in _metrics(node)

    await _spoofing_is_not_identity(setup)

    # The agent is SIGKILLed; meanwhile a stale peer appears on the device. A new agent rebuilds the peer
    # set from the cluster alone, and live peers keep their sessions (traffic flows at once).
    node.processes["agent"].kill()
    node.processes["agent"].wait()
    stale = PrivateKey.generate().public_key()
    await UapiDevice(node.interface).configure(DeviceConfig(peers=(PeerConfig(stale),)))
    node.start_agent()
    numbers["agent restart: peers exact"] = await wait_for(
        lambda: _peers_are(node, keys), 20, "peers after the agent restart"
    )
    answer = alice.sdk("after agent restart")
    assert answer["ok"], answer  # the private DNS is back as soon as the agent has its zone (agent.dns nudge)

    # The interface itself is deleted (wireguard-go exits with it): the running agent recreates it, every
    # peer comes back, the cluster's tunnel listener and the DNS rebind to the new interface.
    checked(run("ip", "-n", node.netns, "link", "del", node.interface))
    numbers["interface deleted: peers back"] = await wait_for(
        lambda: _peers_are(node, keys), 20, "peers after the interface was deleted"
    )
    # wireguard-go itself is killed: the same recovery.
    os.kill(_wireguard_go_pid(node), signal.SIGKILL)
    await wait_for(lambda: not socket_live(node.interface), 5, "wireguard-go gone")
    numbers["wireguard-go killed: peers back"] = await wait_for(
        lambda: _peers_are(node, keys), 20, "peers after wireguard-go was killed"
    )
    # The client reconnects with a new key (no need to wait for WireGuard's own re-handshake timer).
    old = alice.connection()
    assert old is not None
    checked(alice.wardgate("disconnect"))
    assert not _resolv_conf(alice).exists()
    new = _connect(alice)
    assert (new["tunnel_ipv4"], new["tunnel_ipv6"]) == (old["tunnel_ipv4"], old["tunnel_ipv6"])
    await wait_for(lambda: _count_peers(node, 2), 5, "alice's new key on the node")
    assert set(await node.peers()) != keys
    answer = alice.sdk("after the interface came back")
    assert answer["ok"], answer

    await _expiry_removes_the_peer(setup, numbers)
    await _revocation_cuts_the_tunnel(setup, numbers)
    print("\n" + "\n".join(f"{k}: {v * 1000:.0f} ms" for k, v in numbers.items()))


async def _count_peers(node: Node, count: int) -> bool:
    try:
        return len(await node.peers()) == count
    except Exception:
        return False


async def _peers_are(node: Node, keys: set[PublicKey]) -> bool:
    try:
        return set(await node.peers()) == keys
    except Exception:
        return False


async def _spoofing_is_not_identity(setup: Setup) -> None:
    """Packets claiming alice's tunnel address from outside her tunnel are never answered as alice."""
    node, alice, bob = setup.node, setup.alice, setup.bob
    bob_connection = bob.connection()
    assert bob_connection is not None
    bob_veth, bob_mac = veth_of(bob.netns, f"172.31.{C2_V}.2")
    _, node_mac = veth_of(node.netns, f"172.31.{C2_V}.1")
    # A plain connection to the gateway address that does not come through the tunnel is refused outright.
    checked(run("ip", "-n", bob.netns, "route", "add", f"{GATEWAY}/32", "via", f"172.31.{C2_V}.1", "metric", "500"))
    assert tcp_open(bob.netns, GATEWAY, 80, device=bob_veth) == "refused"
    assert tcp_open(bob.netns, GATEWAY, 80) == "open"  # through bob's own tunnel

    log_before = len(node.access_log())
    veth_port, tunnel_port, control_port = 40001, 40002, 40003
    query = DNS(rd=1, qd=DNSQR(qname=f"llm.{ZONE}"))
    sniff_alice, sniff_bob = Sniffer(alice.netns, alice.interface), Sniffer(bob.netns, bob.interface)
    try:
        spoofed = IP(src=alice.tunnel_ipv4, dst=GATEWAY)
        _send_frames(
            bob.netns,
            bob_veth,
            [
                bytes(Ether(src=bob_mac, dst=node_mac) / spoofed / TCP(sport=veth_port, dport=80, flags="S")),
                bytes(Ether(src=bob_mac, dst=node_mac) / spoofed / UDP(sport=veth_port, dport=53) / query),
            ],
        )
        _send_ip(
            bob.netns,
            [
                spoofed / TCP(sport=tunnel_port, dport=80, flags="S"),
                spoofed / UDP(sport=tunnel_port, dport=53) / query,
                IP(src=bob_connection["tunnel_ipv4"], dst=GATEWAY) / TCP(sport=control_port, dport=80, flags="S"),
                IP(src=bob_connection["tunnel_ipv4"], dst=GATEWAY) / UDP(sport=control_port, dport=53) / query,
            ],
        )
        await asyncio.sleep(1.5)
    finally:
        to_alice, to_bob = sniff_alice.stop(), sniff_bob.stop()
    # The control: the same crafted packets with bob's own address are answered through bob's tunnel.
    control = _from_gateway_to(to_bob, {control_port})
    assert any(p.haslayer(TCP) and p[TCP].flags == "SA" for p in control), [p.summary() for p in to_bob]
    assert any(p.haslayer(DNS) and p[DNS].qr == 1 for p in control), [p.summary() for p in to_bob]
    # Spoofed: no connection was accepted and no DNS answer was sent for alice's address. Through bob's tunnel
    # WireGuard drops them (not bob's allowed IP); from the veth the node refuses (at most a RST goes to alice).
    answered = _from_gateway_to(to_alice, {veth_port, tunnel_port}) + _from_gateway_to(to_bob, {veth_port, tunnel_port})
    assert not [p for p in answered if p.haslayer(TCP) and p[TCP].flags != "R" and p[TCP].flags != "RA"], answered
    assert not [p for p in answered if p.haslayer(DNS)], answered
    assert not [p for p in answered if p.haslayer(TCP) and p[TCP].dport == tunnel_port], answered
    assert all(e.get("remote") not in (alice.tunnel_ipv4, alice.tunnel_ipv6) for e in node.access_log()[log_before:])


async def _expiry_removes_the_peer(setup: Setup, numbers: dict[str, float]) -> None:
    node, bob = setup.node, setup.bob
    checked(bob.wardgate("disconnect"))
    assert not _resolv_conf(bob).exists()
    token = _credential(node, "bob-short", "bob", "auth-token", "--expires-in", "8s")
    _login(bob, setup, token)
    before = set(await node.peers())
    _connect(bob)
    await wait_for(lambda: _count_peers(node, len(before) + 1), 5, "bob's short peer")
    (bob_key,) = set(await node.peers()) - before
    login = json.loads((bob.config / "wardgate" / "login.json").read_text())
    expires = datetime.fromisoformat(login["session_expires_at"])
    assert expires - datetime.now(UTC) < timedelta(seconds=8)

    async def gone() -> bool:
        return bob_key not in await node.peers()

    await wait_for(gone, 12, "the expired peer removed", step=0.002)
    late = (datetime.now(UTC) - expires).total_seconds()
    numbers["expiry: peer removed after expiresAt"] = late
    assert -0.05 < late < 1.0, f"peer removed {late:.3f} s after the session expired"
    await wait_for(lambda: bob.connection() is None, 10, "bob's client noticed the end of its session", step=0.05)
    assert not _resolv_conf(bob).exists()


async def _revocation_cuts_the_tunnel(setup: Setup, numbers: dict[str, float]) -> None:
    node, alice = setup.node, setup.alice
    session = json.loads((alice.config / "wardgate" / "login.json").read_text())["session"]
    (alice_key,) = {k for k, p in (await node.peers()).items() if f"{alice.tunnel_ipv4}/32" in map(str, p.allowed_ips)}
    invoked = datetime.now(UTC)

    async def cut() -> bool:
        return alice_key not in await node.peers()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(asyncio.to_thread(node.ctl, "delete", "session", session))
        await wait_for(cut, 10, "alice's peer removed after revocation", step=0.002)
        cut_at = datetime.now(UTC)
    (entry,) = [e for e in node.access_log() if e.get("method") == "DELETE" and e["path"].endswith(session)]
    received = datetime.fromisoformat(entry["time"]) - timedelta(milliseconds=entry["durationMs"])
    numbers["revocation: DELETE received -> peer removed"] = (cut_at - received).total_seconds()
    numbers["revocation: `wardgatectl delete` started -> peer removed"] = (cut_at - invoked).total_seconds()
    assert (cut_at - received).total_seconds() < 1.0
    assert tcp_open(alice.netns, GATEWAY, 80, timeout=1) != "open"
    await wait_for(lambda: alice.connection() is None, 10, "alice's client noticed the revocation", step=0.05)
    assert not _resolv_conf(alice).exists()
    status = alice.wardgate("status")
    print(f"\n$ wardgate status  # after revocation\n{status.stdout}")
    assert status.returncode == 3 and "revoked" in status.stdout, status.stdout
