"""`make bench-tunnel` (root): one Service over the public HTTPS path and through the WireGuard tunnel, against
the direct path to the provider, measured with wrk from the client's namespace in one run.

    client ──veth 61── node (.1): wardgate-cluster, wardgate-agent, wireguard-go (the kernel's, if loaded)
       │                   └──veth 63── up (.2): python -m tests.fakes.openai_provider on 0.0.0.0:8000
       └──────────────────────veth 62── up (.1)
    client: `wardgate login`, `wardgate connect --detach`, then wrk (POST /v1/chat/completions, JSON answer):
      direct  http://172.31.62.1:8000                     the provider's key (one veth hop)
      public  https://172.31.61.1, Host llm.<domain>      an ACCESS_TOKEN credential as bearer (TLS, two hops)
      tunnel  http://llm.local.<domain>                   no token: the WireGuard peer is the identity (two hops)

The namespaces and the harness are tests/netns's (lab.py, test_client_access.py's Node and Client); their
names are unique per run, and they, their processes and their /etc/netns files are removed whatever happens.
Prints req/s at c=32 and p50 (+p50 against direct) at c=1 for each path. Two more rows take the gateway
out: a second provider in the node's namespace, reached from the client over the veth and over WireGuard.
Their difference is what the tunnel's own hops (wireguard-go on both ends) add to an HTTP exchange, and the
next line takes it out of the tunnel-against-public comparison. Every row also shows the CPU per request
(from /proc) of the gateway, of wireguard-go (both ends) and of that second provider; the last line sets
the gateway's extra CPU on the tunnel beside the extra CPU the same hops cost the bare provider.

    sudo .venv/bin/python bench/tunnel.py [--duration 10] [--pin]

--pin puts every thread of the gateway on the first core and everything else (wrk, wireguard-go, the agent,
the providers, the client) on the others, so that wireguard-go no longer competes with the gateway for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.gateway import BODY, WrkResult, pin, run_wrk  # noqa: E402
from bench.plumbing import cpu_seconds  # noqa: E402
from tests.conftest import BIN  # noqa: E402
from tests.netns.lab import Lab  # noqa: E402
from tests.netns.test_client_access import (  # noqa: E402
    DOMAIN,
    ZONE,
    Client,
    Node,
    _connect,
    _credential,
    _wait_port,
    checked,
    resources,
    run,
    socket_exists,
    wait_for,
)
from tests.netns.test_failover import tunnel_chat  # noqa: E402

CLIENT_V, DIRECT_V, UP_V = 61, 62, 63  # veth subnets: node─client, up─client, node─up (172.31.<n>.1 is the first)
PROVIDER_KEY = "sk-bench-tunnel-provider"
NODE_PROVIDER_PORT = 8001
WG_ONLY = ("provider on the node, over the veth", "provider on the node, over WireGuard")
JSON = {"Content-Type": "application/json"}


def _implementation() -> str:
    return "kernel WireGuard" if Path("/sys/module/wireguard").exists() else "wireguard-go"


def _manifests(upstream: str) -> list[dict[str, Any]]:
    """test_client_access's resources (users, the node agent's user, the `llm` Service with an ops-only CEL rule),
    with `llm` public too, so one Service answers on both paths."""
    docs = resources(upstream)
    for doc in docs:
        if doc["kind"] == "Service" and doc["metadata"]["name"] == "llm":
            doc["spec"]["isPublic"] = True
    return docs


def _layout(lab: Lab, root: Path) -> tuple[Node, Client, str]:
    names = {role: lab.namespace() for role in ("node", "client", "up")}
    lab.veth(names["node"], names["client"], CLIENT_V)
    lab.veth(names["up"], names["client"], DIRECT_V)
    lab.veth(names["node"], names["up"], UP_V)
    logs = root / "logs"
    logs.mkdir()
    node = Node(names["node"], lab.interface_name(), root / "home", root / "agent.toml", logs)
    client = Client("alice", names["client"], lab.interface_name(), root / "alice", f"172.31.{CLIENT_V}.1")
    return node, client, names["up"]


def _start(node: Node, client: Client, up: str, root: Path) -> None:
    """The provider, the cluster and its agent; the client logged in."""
    checked(
        run(
            str(BIN / "wardgate-cluster"), "init", "--home", str(node.home), "--domain", DOMAIN,
            "--admin-listen", "127.0.0.1:9443", "--public-listen", "0.0.0.0:443",
        )
    )  # fmt: skip
    with (node.home / "cluster.toml").open("a") as settings:
        settings.write(f'\n[tunnel]\ninterface = "{node.interface}"\n')
    provider = node.start(
        "provider", str(BIN / "python"), "-m", "tests.fakes.openai_provider", "--host", "0.0.0.0",
        "--port", "8000", "--api-key", PROVIDER_KEY, netns=up,
    )  # fmt: skip
    node.start(
        "provider-on-node", str(BIN / "python"), "-m", "tests.fakes.openai_provider", "--host", "0.0.0.0",
        "--port", str(NODE_PROVIDER_PORT), "--api-key", PROVIDER_KEY,
    )  # fmt: skip
    cluster = node.start("cluster", str(BIN / "wardgate-cluster"), "run", "--home", str(node.home))
    asyncio.run(_wait_port(node.netns, "127.0.0.1", 9443, cluster, node))
    asyncio.run(_wait_port(up, f"172.31.{UP_V}.2", 8000, provider, node))
    manifest = root / "resources.yaml"
    manifest.write_text(yaml.safe_dump_all(_manifests(f"http://172.31.{UP_V}.2:8000")))
    node.ctl("apply", "-f", str(manifest))
    node.ctl("create", "secret", "provider-key", "--value", PROVIDER_KEY)
    (root / "agent.token").write_text(_credential(node, "node-agent", "node-agent", "access-token") + "\n")
    node.agent_config.write_text(
        f'node = "node-1"\ninterface = "{node.interface}"\nlisten_port = 51820\nstate_dir = "agent-state"\n'
        "resync_interval = 1.0\nreport_interval = 0.5\n\n[cluster]\n"
        f'url = "https://127.0.0.1:9443"\nca_file = "{node.home / "ca.crt"}"\ntoken_file = "{root / "agent.token"}"\n'
    )
    node.start_agent()
    asyncio.run(
        wait_for(lambda: socket_exists(node.interface) and "node-1" in node.ctl("get", "nodes"), 30, "agent registered")
    )
    login_token = _credential(node, "alice-laptop", "alice", "auth-token")
    checked(
        client.wardgate(
            "login", "--domain", DOMAIN, "--auth-token", login_token, "--ca", str(node.home / "ca.crt"),
            "--address", client.node_address,
        )
    )  # fmt: skip


@dataclass
class Run:
    """One wrk run and the CPU per request it cost each part, from /proc, in µs: the gateway (every
    wardgate-cluster process), wireguard-go (both ends), and the provider in the node's namespace."""

    wrk: WrkResult
    gateway_us: float
    wireguard_us: float
    provider_us: float


def _processes(namespaces: Sequence[str]) -> dict[str, list[int]]:
    """The run's processes in `namespaces` by part: the gateway (every wardgate-cluster process), wireguard-go,
    the fake providers, and the rest (the agent, the client)."""
    parts: dict[str, list[int]] = {"gateway": [], "wireguard-go": [], "provider": [], "rest": []}
    markers = (("gateway", b"wardgate-cluster"), ("wireguard-go", b"wireguard-go"), ("provider", b"openai_provider"))
    for netns in namespaces:
        for pid in run("ip", "netns", "pids", netns).stdout.split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            part = next((part for part, marker in markers if marker in command), "rest")
            parts[part].append(int(pid))
    return parts


def _cpu(namespaces: Sequence[str]) -> dict[str, float]:
    """CPU seconds used so far by the gateway, wireguard-go and the fake provider in `namespaces`."""
    parts = _processes(namespaces)
    return {part: cpu_seconds(parts[part]) for part in ("gateway", "wireguard-go", "provider")}


def _pin(namespaces: Sequence[str]) -> tuple[str, str]:
    """--pin: every thread of the gateway's processes on the first core, every other process of the run
    (wireguard-go, the agent, the providers, the client) on the other cores. Returns both core lists."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise RuntimeError("--pin needs at least 2 cores")
    parts = _processes(namespaces)
    pin(parts.pop("gateway"), cores[:1])
    pin([pid for pids in parts.values() for pid in pids], cores[1:])
    return str(cores[0]), ",".join(map(str, cores[1:]))


def _measure(
    name: str,
    netns: str,
    url: str,
    headers: dict[str, str],
    duration: float,
    root: Path,
    watch: Sequence[str],
    cores: str | None,
) -> list[Run]:
    """A 1 s warm-up that must answer 200 only, then c=1 and c=32 for `duration` seconds each, with the CPU
    that the gateway, wireguard-go and the node's provider (in the namespaces `watch`) spent per request
    meanwhile. wrk runs on `cores` when given."""
    prefix: tuple[str, ...] = ("ip", "netns", "exec", netns)
    if cores is not None:
        prefix = ("taskset", "-c", cores, *prefix)
    warm = run_wrk(url, headers, BODY, 1, 1, root, prefix=prefix)
    if warm.errors or not warm.requests:
        raise RuntimeError(f"{name}: the warm-up had {warm.errors} errors in {warm.requests} requests ({url})")
    runs = []
    for c in (1, 32):
        before = _cpu(watch)
        wrk = run_wrk(url, headers, BODY, c, duration, root, prefix=prefix)
        after = _cpu(watch)
        used = {part: (after[part] - before[part]) * 1e6 / max(wrk.requests, 1) for part in after}
        runs.append(Run(wrk, used["gateway"], used["wireguard-go"], used["provider"]))
    return runs


def _print(results: dict[str, list[Run]], duration: float, pinned: tuple[str, str] | None) -> None:
    print(
        f"\nTunnel bench: JSON chat completion, wrk in the client namespace, {duration:.0f} s per run, "
        f"{_implementation()}, {os.cpu_count()} cores"
    )
    if pinned is not None:
        print(
            f"pinned: the gateway on cpu {pinned[0]}; wrk, wireguard-go, the agent and the providers on cpu {pinned[1]}"
        )
    print(
        f"{'target':38} {'c=32 req/s':>10} {'x direct':>9} {'c=1 p50 ms':>11} {'+p50 ms':>8} {'errors':>7} "
        f"{'CPU µs/req c=1, c=32: gateway':>30} {'wireguard-go':>13} {'node provider':>14}"
    )
    direct_c1, direct_c32 = (r.wrk for r in results["direct"])
    for name, (c1, c32) in results.items():
        rps = c32.wrk.requests_per_second
        ratio = rps / direct_c32.requests_per_second if direct_c32.requests_per_second else 0.0
        gateway, hops_cpu, provider = (
            f"{a:.0f}, {b:.0f}" if a + b >= 10 else "-"
            for a, b in (
                (c1.gateway_us, c32.gateway_us),
                (c1.wireguard_us, c32.wireguard_us),
                (c1.provider_us, c32.provider_us),
            )
        )
        print(
            f"{name:38} {rps:10.0f} {ratio:9.2f} {c1.wrk.p50_ms:11.2f} "
            f"{c1.wrk.p50_ms - direct_c1.p50_ms:8.2f} {c1.wrk.errors + c32.wrk.errors:7d} "
            f"{gateway:>30} {hops_cpu:>13} {provider:>14}"
        )
    public, tunnel = results["public (HTTPS)"], results["tunnel (HTTP over WireGuard)"]
    added = tunnel[0].wrk.p50_ms - public[0].wrk.p50_ms
    verdict = "no more than" if added <= 0 else "more than"
    print(
        f"tunnel against public: {added:+.2f} ms p50 at c=1, "
        f"{tunnel[1].wrk.requests_per_second - public[1].wrk.requests_per_second:+.0f} req/s at c=32: "
        f"the tunnel adds {verdict} the public path at c=1"
    )
    veth, wireguard = (results[name][0].wrk.p50_ms for name in WG_ONLY)
    hops = wireguard - veth
    verdict = "no more than" if added - hops <= 0 else "more than"
    print(
        f"WireGuard's own hops (the provider on the node, over WireGuard against over the veth): {hops:+.2f} ms p50 "
        f"at c=1; without them the tunnel adds {added - hops:+.2f} ms against public: {verdict} the public path"
    )
    own = [t.gateway_us - p.gateway_us for t, p in zip(tunnel, public, strict=True)]
    veth_run, wg_run = results[WG_ONLY[0]], results[WG_ONLY[1]]
    control = [w.provider_us - v.provider_us for v, w in zip(veth_run, wg_run, strict=True)]
    print(
        f"the gateway's CPU per request, tunnel against public: {own[0]:+.0f} µs at c=1, {own[1]:+.0f} µs at c=32; "
        f"a bare server behind the same hops (the provider on the node, over WireGuard against over the veth): "
        f"{control[0]:+.0f} and {control[1]:+.0f} µs; wireguard-go spent {tunnel[0].wireguard_us:.0f} (c=1) and "
        f"{tunnel[1].wireguard_us:.0f} (c=32) µs per tunnel request"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: namespaces are removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--pin", action="store_true", help="the gateway alone on the first core, everything else on the others"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/tunnel.py needs root (network namespaces, WireGuard interfaces)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("wrk", "ip", "wireguard-go") if shutil.which(tool) is None]
    if missing:
        print(f"missing tools {missing}: apt-get install wrk; `make install` installs the rest", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="wardgate-bench-tunnel-"))
    lab = Lab()
    node: Node | None = None
    client: Client | None = None
    try:
        node, client, up = _layout(lab, root)
        _start(node, client, up, root)
        _connect(client)
        deadline = time.monotonic() + 20
        while tunnel_chat(client.netns, 2.0) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("no 200 through the tunnel within 20 s")
            time.sleep(0.2)
        token = _credential(node, "alice-bench", "alice", "access-token")
        key = f"Bearer {PROVIDER_KEY}"
        targets = {
            "direct": (f"http://172.31.{DIRECT_V}.1:8000/v1/chat/completions", key, None),
            "public (HTTPS)": (f"https://172.31.{CLIENT_V}.1/v1/chat/completions", f"Bearer {token}", f"llm.{DOMAIN}"),
            "tunnel (HTTP over WireGuard)": (f"http://llm.{ZONE}/v1/chat/completions", None, None),
            WG_ONLY[0]: (f"http://{client.node_address}:{NODE_PROVIDER_PORT}/v1/chat/completions", key, None),
            WG_ONLY[1]: (f"http://llm.{ZONE}:{NODE_PROVIDER_PORT}/v1/chat/completions", key, None),
        }
        results: dict[str, list[Run]] = {}
        watch = (node.netns, client.netns)
        pinned = _pin((*watch, up)) if args.pin else None
        for name, (url, authorization, host) in targets.items():
            headers = dict(JSON)
            if authorization:
                headers["Authorization"] = authorization
            if host:
                headers["Host"] = host
            cores = pinned[1] if pinned is not None else None
            results[name] = _measure(name, client.netns, url, headers, args.duration, root, watch, cores)
        _print(results, args.duration, pinned)
        return 0
    except Exception:
        if node is not None:
            print(node.dump(), file=sys.stderr)
        raise
    finally:
        if client is not None:
            client.wardgate("disconnect", timeout=30)
        if node is not None:
            node.stop_all()
        netns_files = [Path("/etc/netns") / name for name in lab.namespaces]
        asyncio.run(lab.cleanup())
        for path in netns_files:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        if lab.leftovers():
            print(f"left on the host: {lab.leftovers()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
