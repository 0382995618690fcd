"""Nodes of one cluster over a shared PostgreSQL: `init --store` the first, `join` the others, run each.

Used by the multi-node tests and by bench/ha.py. Each node is a real `wardgate-cluster run` process with its
own home, listeners and worker board; `applied()` reads a node's board: the revision each worker serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import BIN, RunningCluster, free_port

DOMAIN = "wardgate.test"


def _command(*args: str) -> None:
    result = subprocess.run([str(BIN / "wardgate-cluster"), *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"wardgate-cluster {args[0]} failed:\n{result.stdout}\n{result.stderr}")


def init_first(home: Path, store: str, name: str = "node-a", public_port: int | None = None) -> None:
    public_port = public_port or free_port()
    _command(
        "init", "--home", str(home), "--domain", DOMAIN, "--store", store, "--node-name", name,
        "--admin-listen", f"127.0.0.1:{free_port()}", "--public-listen", f"127.0.0.1:{public_port}",
    )  # fmt: skip


def join(home: Path, store: str, first: Path, name: str) -> None:
    _command(
        "join", "--home", str(home), "--store", store, "--store-key-file", str(first / "store.key"),
        "--node-name", name, "--admin-listen", f"127.0.0.1:{free_port()}",
        "--public-listen", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    # An operator copies an admin token to the new node's wardgatectl config; so does the test.
    shutil.copy(first / "admin.token", home / "admin.token")


def _listen(home: Path, table: str) -> str:
    for line in (home / "cluster.toml").read_text().split(f"[{table}]", 1)[1].splitlines():
        if line.startswith("listen"):
            return line.split('"')[1]
    raise AssertionError(f"no [{table}] listen in {home}/cluster.toml")


def run(home: Path, workers: int = 1, ready: bool = True) -> RunningCluster:
    """Start `wardgate-cluster run`; with `ready`, wait until /readyz answers 200."""
    log_path = home.parent / f"{home.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "wardgate-cluster"), "run", "--home", str(home), "--workers", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = "https://" + _listen(home, "admin")
    public_port = int(_listen(home, "public").rpartition(":")[2])
    node = RunningCluster(home, url, DOMAIN, process, log_path, public_port)
    if ready:
        wait_ready(node)
    return node


def readyz(node: RunningCluster) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(node.home / "ca.crt"))
    try:
        with urllib.request.urlopen(node.url + "/readyz", context=context, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_ready(node: RunningCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while readyz(node)[0] != 200:
        if node.process.poll() is not None or time.monotonic() > deadline:
            node.process.kill()
            raise AssertionError(f"{node.home.name} did not get ready:\n" + node.log_path.read_text()[-4000:])
        time.sleep(0.05)


def applied(node: RunningCluster) -> list[int]:
    """The revision each live worker of the node has applied (its worker board, run/workers)."""
    data = (node.home / "run" / "workers").read_bytes()
    return [revision for pid, revision in struct.iter_unpack("<qq", data) if pid]


# --- propagation across nodes ---------------------------------------------------------------------------

BOT = "bot"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def manifests(upstream: str) -> list[dict[str, Any]]:
    """A workload user and a public Service it may call (the upstream key comes from Secret upstream-key)."""
    allow = {"effect": "ALLOW", "condition": {"match": f'ctx.user.metadata.name == "{BOT}"'}}
    return [
        {"kind": "User", "metadata": {"name": BOT}, "spec": {"type": "WORKLOAD"}},
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {
                "isPublic": True,
                "config": {"upstream": {"url": upstream}, "http": {"auth": {"bearer": {"fromSecret": "upstream-key"}}}},
                "authorization": {"inlinePolicies": [{"spec": {"rules": [allow]}}]},
            },
        },
    ]


async def call(node: RunningCluster, method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any] | None]:
    """One request on a new connection (SO_REUSEPORT spreads new connections over the node's workers)."""
    context = ssl.create_default_context(cafile=str(node.home / "ca.crt"))
    connector = aiohttp.TCPConnector(force_close=True, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        return r.status, body


def admin_headers(node: RunningCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token}"}


async def until_applied(nodes: list[RunningCluster], started: float, deadline: float = 10.0) -> float:
    """Seconds from `started` until every worker of every node has applied the store's current revision."""
    target = max(max(applied(n)) for n in nodes)
    while True:
        now = time.perf_counter()
        if all(min(applied(n)) >= target for n in nodes):
            return now - started
        if now - started > deadline:
            raise AssertionError(
                f"revision {target} not applied everywhere after {deadline:g} s: "
                + ", ".join(f"{n.home.name}={applied(n)}" for n in nodes)
            )
        await asyncio.sleep(0.0005)


async def token_for(node: RunningCluster, client_id: str, secret: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    status, body = await call(node, "POST", node.public_url() + "/oauth2/token", data=form)
    assert status == 200 and body is not None, (node.home.name, status, body)
    return str(body["access_token"])


async def chat_status(node: RunningCluster, token: str) -> int:
    url = node.public_url("llm") + "/v1/chat/completions"
    status, _ = await call(node, "POST", url, json=CHAT, headers={"Authorization": f"Bearer {token}"})
    return status


async def revocation_round(nodes: list[RunningCluster], round_: int, checks: int = 4) -> tuple[float, float]:
    """Create a credential through one node, use it through every node, revoke it (a Credential, Session or
    User, in turn) through the other; returns (seconds until the creation, seconds until the revocation,
    is applied by every worker of every node), each timed from just before the admin request."""
    writer, other = nodes[round_ % 2], nodes[(round_ + 1) % 2]
    name = f"cred-{round_}"
    started = time.perf_counter()
    status, created = await call(
        writer, "POST", writer.url + "/api/v1/credentials",
        json={"name": name, "user": BOT, "type": "oauth2"}, headers=admin_headers(writer),
    )  # fmt: skip
    assert status == 200 and created is not None, (status, created)
    create_delay = await until_applied(nodes, started)
    token = await token_for(other, created["clientId"], created["clientSecret"])
    # The exchange stored a Session through `other`: the same bound applies before the first node serves it.
    create_delay = max(create_delay, await until_applied(nodes, time.perf_counter()))
    for node in nodes:
        assert await chat_status(node, token) == 200, f"round {round_}: a fresh token refused by {node.home.name}"
    kind = ("credentials", "sessions", "users")[round_ % 3]
    target = name
    if kind == "sessions":
        status, listed = await call(other, "GET", other.url + "/api/v1/sessions", headers=admin_headers(other))
        assert status == 200 and listed is not None
        target = next(s["metadata"]["name"] for s in listed["items"] if s["spec"]["credential"] == name)
    elif kind == "users":
        target = BOT
    started = time.perf_counter()
    status, _ = await call(other, "DELETE", other.url + f"/api/v1/{kind}/{target}", headers=admin_headers(other))
    assert status == 200, (kind, target, status)
    revoke_delay = await until_applied(nodes, started)
    for node in nodes:
        for _ in range(checks):
            assert await chat_status(node, token) == 401, f"round {round_}: revoked {kind} accepted by {node.home.name}"
    if kind == "users":
        user = {"kind": "User", "metadata": {"name": BOT}, "spec": {"type": "WORKLOAD"}}
        status, _ = await call(
            writer, "PUT", writer.url + f"/api/v1/users/{BOT}", json=user, headers=admin_headers(writer)
        )
        assert status == 200
    else:
        await call(writer, "DELETE", writer.url + f"/api/v1/credentials/{name}", headers=admin_headers(writer))
    return create_delay, revoke_delay


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def workers_of(node: RunningCluster) -> list[int]:
    """The pids of the node's secondary workers (children of its primary)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == node.process.pid:
                found.append(int(entry.name))
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
