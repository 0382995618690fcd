"""Prometheus metrics for `/metrics` on the admin listener, fed from each request's access-log entry.

Label children are cached per label tuple, so a request costs a few dict lookups and increments.
Gauges that describe state (active sessions) are computed at scrape time from the resource cache.

With `run --workers N`, every worker's counters and histograms live in files of one directory
(prometheus-client's multiprocess mode, `share_between_workers`), and the primary's `/metrics` sums them.
Every series carries the node's name as its `node` label (those about other nodes keep theirs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from wardgate.cluster.observability.record import AccessRecord

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


WireGuardPeers = Callable[[], Mapping[str, Iterable[tuple[str, float | None, int, int]]]]
"""node -> (session or public key, seconds since the last handshake or None, rx bytes, tx bytes) per peer."""
UpstreamEndpoints = Callable[[], Iterable[tuple[str, bool, int, int]]]
"""(endpoint URL, up, tries in flight, ejections so far) of every balanced endpoint this worker has used."""


class _StateCollector(Collector):
    def __init__(
        self, sessions: Callable[[], Mapping[str, int]], wireguard: WireGuardPeers, endpoints: UpstreamEndpoints
    ) -> None:
        self._sessions = sessions
        self._wireguard = wireguard
        self._endpoints = endpoints

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("wardgate_active_sessions", "Live sessions by type", labels=["type"])
        for kind, count in sorted(self._sessions().items()):
            family.add_metric([kind], count)
        yield family
        peers = GaugeMetricFamily("wardgate_wireguard_peers", "Peers on each node's WireGuard device", labels=["node"])
        age = GaugeMetricFamily(
            "wardgate_wireguard_handshake_age_seconds",
            "Seconds since each peer's last handshake",
            labels=["node", "peer"],
        )
        traffic = GaugeMetricFamily(
            "wardgate_wireguard_bytes",
            "Bytes through each peer (device counters)",
            labels=["node", "peer", "direction"],
        )
        for node, entries in sorted(self._wireguard().items()):
            listed = list(entries)
            peers.add_metric([node], len(listed))
            for peer, seconds, rx, tx in listed:
                if seconds is not None:
                    age.add_metric([node, peer], seconds)
                traffic.add_metric([node, peer, "rx"], rx)
                traffic.add_metric([node, peer, "tx"], tx)
        yield peers
        yield age
        yield traffic
        yield from _endpoint_families(self._endpoints())


def _endpoint_families(endpoints: Iterable[tuple[str, bool, int, int]]) -> Iterable[Metric]:
    up = GaugeMetricFamily("wardgate_upstream_endpoint_up", "1 while an endpoint is in rotation", labels=["endpoint"])
    busy = GaugeMetricFamily("wardgate_upstream_endpoint_in_flight", "Tries in flight", labels=["endpoint"])
    ejected = CounterMetricFamily(
        "wardgate_upstream_endpoint_ejections", "Times an endpoint was left out after failing", labels=["endpoint"]
    )
    for url, healthy, in_flight, ejections in endpoints:
        up.add_metric([url], 1 if healthy else 0)
        busy.add_metric([url], in_flight)
        ejected.add_metric([url], ejections)
    yield up
    yield busy
    yield ejected


def fresh_directory(directory: Path) -> None:
    """Empty `directory` (the files of a previous run's workers would be summed into this run's)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)


def share_between_workers(directory: Path) -> None:
    """From now on, this process's metric values live in `directory` (one file per process and metric type),
    where the primary's `Metrics(shared=directory)` reads every worker's. Call once per process, before its
    Metrics is made; the primary empties the directory (fresh_directory) before any worker starts."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _NodeLabel(Collector):
    """The families of `sources`, each sample labelled `node` (when given) unless it already names one."""

    def __init__(self, node: str | None, sources: list[Collector]) -> None:
        self._node = node
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            for family in source.collect():
                if self._node is None:
                    yield family
                    continue
                labelled = Metric(family.name, family.documentation, family.type, family.unit)
                labelled.samples = [
                    s if "node" in s.labels else s._replace(labels={**s.labels, "node": self._node})
                    for s in family.samples
                ]
                yield labelled


class Metrics:
    """The gateway's metrics, in their own registry (tests and several clusters in one process stay apart).

    `node` labels every series; `shared`: the directory of share_between_workers, whose files `render` sums
    (the primary worker's view of every worker's requests)."""

    def __init__(
        self,
        sessions: Callable[[], Mapping[str, int]] = dict,
        wireguard: WireGuardPeers = dict,
        endpoints: UpstreamEndpoints = tuple,
        node: str | None = None,
        shared: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "wardgate_requests",
            "Requests by service, status and decision",
            ["listener", "service", "status", "decision"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "wardgate_request_duration_seconds",
            "Total request duration",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream = Histogram(
            "wardgate_upstream_duration_seconds",
            "Upstream duration (to the end of the answer)",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "wardgate_llm_tokens",
            "LLM tokens from usage reports",
            ["service", "user", "model", "direction"],
            registry=self.registry,
        )
        self.cost = Counter(
            "wardgate_llm_cost",
            "LLM cost in the Pricing currency",
            ["service", "user", "model"],
            registry=self.registry,
        )
        self.quota = Counter(
            "wardgate_quota_decisions",
            "Requests a Quota refused (refused: 429; unavailable: 503) or let through unchecked (fail-open)",
            ["service", "quota", "outcome"],
            registry=self.registry,
        )
        self.plugin_failures = Counter(
            "wardgate_plugin_failures",
            "Plugin errors and timeouts",
            ["service", "plugin", "kind"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "wardgate_telemetry_dropped",
            "Spans and log records dropped (queue full or collector down)",
            ["signal"],
            registry=self.registry,
        )
        self.ledger_failures = Counter(
            "wardgate_usage_ledger_failures",
            "Usage ledger failures: write (a batch not written yet, kept and retried), dropped (records lost)",
            ["kind"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "wardgate_upstream_attempts",
            "Tries of upstreams (retries and fallbacks included) by config and outcome",
            ["service", "config", "outcome"],
            registry=self.registry,
        )
        self.mcp_calls = Counter(
            "wardgate_mcp_calls",
            "MCP calls by service, method, tool (a listed name, else other) and decision",
            ["service", "method", "tool", "decision"],
            registry=self.registry,
        )
        self.mcp_duration = Histogram(
            "wardgate_mcp_call_duration_seconds",
            "Duration of allowed MCP calls sent alone (not in a batch), to the end of the answer",
            ["service", "method", "tool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        state = _StateCollector(sessions, wireguard, endpoints)
        counted: Collector = self.registry
        if shared is not None:
            counted = MultiProcessCollector(None, path=str(shared))  # type: ignore[no-untyped-call]
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(_NodeLabel(node, [counted, state]))
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: AccessRecord) -> None:
        """Count one finished request from its access record."""
        service = record.service or "-"
        effect = record.decision.effect if record.decision is not None else "-"
        self._child(self.requests, record.listener, service, str(record.status), effect).inc()
        if record.duration_ms is not None:
            self._child(self.duration, service).observe(record.duration_ms / 1000)
        if record.upstream_ms is not None:
            self._child(self.upstream, service).observe(record.upstream_ms / 1000)
        if record.usage:
            user, model = record.user or "-", record.model or "-"
            for direction, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                value = record.usage.get(key)
                if isinstance(value, int | float) and value > 0:
                    self._child(self.tokens, service, user, model, direction).inc(value)
        if record.cost:
            self._child(self.cost, service, record.user or "-", record.model or "-").inc(record.cost)
        if record.quota is not None:
            self._child(self.quota, service, record.quota.name, record.quota.outcome).inc()
        for failure in record.plugin_failures:
            self._child(self.plugin_failures, service, failure.plugin, failure.kind).inc()
        for attempt in record.attempts:
            # `status 503`, `connect`, `skipped`...: a bounded set (statuses are 400-599).
            self._child(self.attempts, service, attempt.config, attempt.reason.partition(":")[0]).inc()

    def mcp_call(self, service: str, method: str, tool: str, decision: str) -> None:
        """One decided MCP call; the caller bounds `method` and `tool` (proxy/mcp_metrics.py)."""
        self._child(self.mcp_calls, service, method, tool, decision).inc()

    def mcp_call_duration(self, service: str, method: str, tool: str, seconds: float) -> None:
        self._child(self.mcp_duration, service, method, tool).observe(seconds)

    def drop(self, signal: str, count: int) -> None:
        self._child(self.dropped, signal).inc(count)

    def ledger_failure(self, kind: str, count: int) -> None:
        self._child(self.ledger_failures, kind).inc(count)

    def render(self) -> bytes:
        return generate_latest(self._exposed)
