"""One cluster process for the resilience tests, in front of fake providers served from a thread of their own
(the fakes' faults are armed from the tests with `fail_next`; the cluster is started once per module)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import RunningCluster, free_port, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import (
    DEEPSEEK_KEY,
    GEMINI_KEY,
    OPENAI_KEY,
    Gateway,
    apply_docs,
    create_credential,
    pointed_at_fakes,
)

GOOG_KEY = "goog-secret-AIza-9999"
ALLOW_ALL = {"inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]}


@dataclass
class Providers:
    fakes: dict[str, tuple[FakeOpenAI, str]]
    closed_url: str
    """A loopback port nobody listens on (connect errors)."""

    def reset(self) -> None:
        for fake, _ in self.fakes.values():
            fake.reset()
            fake.fail_next(0)


@contextlib.contextmanager
def serve_in_thread(fakes: dict[str, FakeOpenAI]) -> Iterator[dict[str, tuple[FakeOpenAI, str]]]:
    """Serve the fakes on an event loop in a thread until the block ends."""
    loop = asyncio.new_event_loop()
    urls: dict[str, str] = {}
    started, stop = threading.Event(), asyncio.Event()

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for name, fake in fakes.items():
                urls[name] = await stack.enter_async_context(fake.serve())
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise AssertionError("the fake providers did not start")
    try:
        yield {name: (fake, urls[name]) for name, fake in fakes.items()}
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def service(name: str, config: dict[str, Any], configs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"isPublic": True, "config": config, "authorization": ALLOW_ALL}
    if configs:
        spec["dynamicConfig"] = {"configs": configs}
    return {"kind": "Service", "metadata": {"name": name}, "spec": spec}


def start(tmp: Path, fakes: dict[str, tuple[FakeOpenAI, str]]) -> tuple[Gateway, RunningCluster]:
    cluster = start_cluster(tmp / "home")
    try:
        docs = pointed_at_fakes({k: fakes[k][1] for k in ("gemini", "openai", "deepseek")})
        apply_docs(cluster, docs, tmp)
        for name, value in (
            ("gemini-api-key", GEMINI_KEY),
            ("openai-api-key", OPENAI_KEY),
            ("deepseek-api-key", DEEPSEEK_KEY),
            ("goog-api-key", GOOG_KEY),
        ):
            cluster.ctl("create", "secret", name, "--value", value, check=True)
        env = Gateway(cluster, fakes)
        env.client_secrets["alice-pat"] = create_credential(cluster, "alice-pat", "alice", "access-token")
        return env, cluster
    except BaseException:
        stop_cluster(cluster)
        raise


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"
