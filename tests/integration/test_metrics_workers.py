"""`/metrics` of a node with `run --workers 2` counts the requests every worker served, labelled with the node.

New connections are spread over the workers by SO_REUSEPORT; each worker's values live in its own files
under run/metrics, which the test reads one by one to prove both workers served some of the requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import RunningCluster, start_cluster, stop_cluster
from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import apply_docs

pytestmark = pytest.mark.usefixtures("loopback_names")

REQUESTS = 60


def _docs(upstream: str) -> list[dict[str, Any]]:
    return [
        {
            "kind": "Service",
            "metadata": {"name": "llm"},
            "spec": {"isPublic": True, "config": {"upstream": {"url": upstream}}},
        }
    ]


def _metrics(cluster: RunningCluster) -> str:
    with urllib.request.urlopen(cluster.url + "/metrics", context=cluster.ssl_context(), timeout=10) as r:
        return str(r.read().decode())


def _value(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if found is None or found[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found[2]))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found[3])
    return total


def _per_worker(directory: Path) -> list[float]:
    """Public requests counted in each worker's own counter file."""
    counts = []
    for path in sorted(directory.glob("counter_*.db")):
        families = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
        counts.append(
            sum(
                s.value
                for f in families
                for s in f.samples
                if s.name == "wardgate_requests_total" and s.labels.get("listener") == "public"
            )
        )
    return counts


async def _request(cluster: RunningCluster, url: str) -> int:
    connector = aiohttp.TCPConnector(force_close=True, ssl=cluster.ssl_context())  # a new connection each time
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
        await response.read()
        return response.status


async def test_metrics_sum_every_workers_requests(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with fake.serve() as upstream:
        cluster = await asyncio.to_thread(start_cluster, tmp_path / "home", workers=2)
        try:
            apply_docs(cluster, _docs(upstream), tmp_path)
            url = cluster.public_url("llm") + "/v1/models"
            statuses = [await _request(cluster, url) for _ in range(REQUESTS)]
            node = json.loads(cluster.access_log()[-1])["node"]
            # A worker counts a request just after its answer has left: give the last ones a moment.
            deadline = time.monotonic() + 5
            while sum(per_worker := _per_worker(cluster.home / "run" / "metrics")) < REQUESTS:
                assert time.monotonic() < deadline, per_worker
                await asyncio.sleep(0.05)
            text = _metrics(cluster)
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
    status = str(statuses[0])
    assert set(statuses) == {int(status)}, statuses
    print(f"\npublic requests per worker: {per_worker}")
    assert len([c for c in per_worker if c > 0]) == 2, per_worker
    assert sum(per_worker) == REQUESTS
    labels = {"listener": "public", "service": "llm", "status": status, "node": node}
    assert _value(text, "wardgate_requests_total", labels) == REQUESTS, text
    assert _value(text, "wardgate_request_duration_seconds_count", {"service": "llm", "node": node}) == REQUESTS
    assert _value(text, "wardgate_request_duration_seconds_bucket", {"le": "+Inf", "node": node}) >= REQUESTS
    # State gauges come from the primary alone, labelled with the node too.
    assert f'wardgate_active_sessions{{node="{node}",type="CLIENT"}} 0.0' in text, text
