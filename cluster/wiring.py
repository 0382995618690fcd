"""The node's parts that `main.serve` builds from settings and hands on: the tunnel listener, the usage meter,
the gauges /metrics reads from the cache and the agents, and the run-directory paths the workers share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from wardgate.cluster.api.agent import AgentApi
from wardgate.cluster.authorize.holder import StateHolder
from wardgate.cluster.config import ClusterSettings, Home
from wardgate.cluster.identity.addresses import TunnelIdentities, TunnelSettings
from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.proxy.connections import ConnectionLimits
from wardgate.cluster.proxy.revocation import LiveConnections
from wardgate.cluster.proxy.server import Telemetry
from wardgate.cluster.proxy.tunnel import TunnelListener, tunnel_gateway
from wardgate.cluster.proxy.upstream import Upstream
from wardgate.cluster.resources.session import Session
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.usage.counters import Counters, LocalCounters
from wardgate.cluster.usage.ledger import InThread, Ledger, SQLiteLedger
from wardgate.cluster.usage.ledger_writer import LedgerWriter
from wardgate.cluster.usage.meter import Meter
from wardgate.cluster.usage.pg_ledger import PostgresLedger
from wardgate.cluster.usage.redis_counters import RedisCounters


def session_counts(cache: ResourceCache) -> dict[str, int]:
    """Open sessions by type, for the sessions gauge of /metrics."""
    counts = {"CLIENT": 0, "CLIENTLESS": 0}
    for session in cache.list_kind("Session"):
        if isinstance(session, Session):
            counts[session.spec.type.value] += 1
    return counts


def tunnel_listener(
    settings: TunnelSettings,
    domain: str,
    cache: ResourceCache,
    state: StateHolder,
    access_log: AccessLog,
    upstream: Upstream,
    node: str,
    telemetry: Telemetry,
    limits: ConnectionLimits,
    live: LiveConnections,
    meter: Meter,
    mcp_sessions: SealedValues,
) -> TunnelListener | None:
    """The listener for <service>.<zone> on the WireGuard interface (identity = source address); None when the
    tunnel is off."""
    if not settings.enabled:
        return None
    network = settings.network(domain)
    gateway = tunnel_gateway(
        zone=network.dns_zone,
        identities=TunnelIdentities(cache),
        state=state,
        upstream=upstream,
        access_log=access_log,
        node=node,
        telemetry=telemetry,
        live=live,
        meter=meter,
        mcp_sessions=mcp_sessions,
    )
    addresses = [network.gateway_ipv4, network.gateway_ipv6]
    return TunnelListener(
        gateway.handle,
        settings.interface,
        addresses,
        settings.http_port,
        limits=limits,
        live=live,
        malformed=gateway.malformed,
    )


def wireguard_metrics(agents: AgentApi) -> dict[str, list[tuple[str, float | None, int, int]]]:
    """Per node, each peer's (session or public key, seconds since its last handshake, rx, tx bytes)."""
    now = datetime.now(UTC)
    return {
        node: [
            (
                peer.session or peer.public_key,
                (now - peer.last_handshake).total_seconds() if peer.last_handshake else None,
                peer.rx_bytes,
                peer.tx_bytes,
            )
            for peer in status.peers
        ]
        for node, status in agents.wireguard_status().items()
    }


async def usage_meter(home: Home, settings: ClusterSettings, metrics: Metrics) -> Meter:
    """Quota counters (Redis when configured, else the node's shared counter file) and the usage ledger (in
    the SQLite store's file; in the cluster's database, for every node, when the store is PostgreSQL)."""
    usage = settings.usage
    counters: Counters
    if usage.redis is not None:
        counters = RedisCounters(usage.redis, usage.redis_timeout)
    else:
        counters = LocalCounters(home.root / "run" / "counters")
    ledger: Ledger
    if settings.store.url is not None:
        ledger = await PostgresLedger.open(settings.store.url)
    else:
        ledger = InThread(SQLiteLedger(home.path(settings.store.path)))
    writer = LedgerWriter(ledger, retention=usage.retention_seconds, on_failure=metrics.ledger_failure)
    return Meter(counters, writer)


def board_path(home: Home) -> Path:
    return home.root / "run" / "workers"


def metrics_path(home: Home) -> Path:
    """Where the workers of `run --workers N` keep their metric values (the primary's /metrics sums them)."""
    return home.root / "run" / "metrics"
