"""What the console shows, read from the sources the rest of the cluster uses (no second source of truth):

    Services  ─▶ authorize.admit (the gateway's decision) for the caller, per compiled Service
    Sessions  ─▶ the resource cache (the Sessions the Authenticator accepts)
    usage     ─▶ the usage ledger (Ledger.history), bucketed, summed per user, group, model or Service
    quotas    ─▶ Meter.begin (the counters the gateway charges) ─▶ the live counters
    refusals  ─▶ the tail of the access-log file every listener writes (status >= 400 with a reason)
    nodes     ─▶ Node resources, the peer set (Sessions with a WireGuard key), agents' reports
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from yarl import URL

from wardgate.cluster.authorize.admit import Caller, Refusal, admit
from wardgate.cluster.authorize.facts import RequestFacts
from wardgate.cluster.authorize.state import GatewayState
from wardgate.cluster.identity.authenticate import Identity
from wardgate.cluster.resources.credential import Credential, CredentialType
from wardgate.cluster.resources.node import Node
from wardgate.cluster.resources.session import Session
from wardgate.cluster.resources.wire import NodeStatus
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.usage.ledger import HistoryRow
from wardgate.cluster.usage.meter import CounterRef, Meter
from wardgate.cluster.usage.rules import NANO, Who

RANGES: dict[str, tuple[float, float]] = {
    "1h": (3600, 300),
    "24h": (86400, 3600),
    "7d": (7 * 86400, 6 * 3600),
    "30d": (30 * 86400, 86400),
}
"""The console's time ranges: (length, bucket) in seconds."""
REFUSAL_WINDOW = 3600.0
LOG_TAIL_BYTES = 8 * 1024 * 1024
MAX_REFUSALS = 200


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    is_public: bool
    public_url: str | None
    """`https://<service>.<domain>[:port]`; None when the Service is reachable only through the client."""
    tunnel_url: str


@dataclass(frozen=True, slots=True)
class QuotaView:
    quota: str
    key: str
    limit: str
    used: float
    maximum: float
    resets_in: float

    @property
    def fraction(self) -> float:
        return self.used / self.maximum if self.maximum else 0.0


@dataclass(slots=True)
class Series:
    """Tokens per bucket for each key of one dimension, and the totals per key (largest first)."""

    buckets: list[float]
    points: dict[str, dict[float, int]] = field(default_factory=dict)
    totals: list[dict[str, Any]] = field(default_factory=list)


def reachable(
    state: GatewayState,
    identity: Identity,
    *,
    domain: str,
    public_port: int,
    tunnel_zone: str,
    tunnel_port: int,
    ip: str,
) -> list[ServiceView]:
    """The Services the gateway admits the caller to (a GET of `/`, as this browser Session)."""
    caller = Caller.of(identity)
    out = []
    for name in sorted(state.services):
        host = f"{name}.{domain}"
        facts = RequestFacts.of("GET", URL("/"), {}, host=host, scheme="https", ip=ip)
        if isinstance(admit(state, caller, facts, name), Refusal):
            continue
        is_public = state.services[name].service.spec.is_public
        port = "" if public_port == 443 else f":{public_port}"
        tport = "" if tunnel_port == 80 else f":{tunnel_port}"
        out.append(
            ServiceView(
                name,
                is_public,
                f"https://{host}{port}" if is_public else None,
                f"http://{name}.{tunnel_zone}{tport}",
            )
        )
    return out


def sessions_of(cache: ResourceCache, user: str | None) -> list[Session]:
    """Live Sessions (of `user`, or everyone's), newest expiry first."""
    now = time.time()
    found = [
        s
        for s in cache.list_kind("Session")
        if isinstance(s, Session) and (user is None or s.spec.user == user) and s.spec.expires_at.timestamp() > now
    ]
    return sorted(found, key=lambda s: (s.spec.user, -s.spec.expires_at.timestamp(), s.metadata.name))


def oauth_clients(cache: ResourceCache, user: str) -> list[str]:
    """The user's enabled OAUTH2 credentials: their names are the `client_id`s of the token step."""
    return sorted(
        c.metadata.name
        for c in cache.list_kind("Credential")
        if isinstance(c, Credential)
        and c.spec.user == user
        and c.spec.type is CredentialType.OAUTH2
        and not c.spec.is_disabled
    )


async def quotas(meter: Meter, state: GatewayState, cache: ResourceCache, identity: Identity) -> list[QuotaView]:
    """Every counter of a Quota that governs the user (for each Service, as the user, each of their
    credentials and live Sessions), read from the live counters; Unavailable when they cannot be read."""
    user = identity.user
    groups = tuple(user.spec.groups)
    name = user.metadata.name
    whos = [Who(name, groups, None, None)]
    whos += [
        Who(name, groups, c.metadata.name, None)
        for c in cache.list_kind("Credential")
        if isinstance(c, Credential) and c.spec.user == name
    ]
    whos += [Who(name, groups, s.spec.credential, s.metadata.name) for s in sessions_of(cache, name)]
    refs: dict[str, CounterRef] = {}
    for who in whos:
        for service in state.services:
            for ref in meter.begin(state.usage, who, service).counters:
                refs.setdefault(ref.key, ref)
    if not refs:
        return []
    values = await meter.counters.read(list(refs))
    out = []
    for ref, used in zip(refs.values(), values, strict=True):
        scale = NANO if ref.limit.measure == "cost" else 1
        key = ref.key.split("|")[2]
        out.append(QuotaView(ref.quota.name, key, ref.limit.label, used / scale, ref.limit.amount / scale, ref.reset))
    return sorted(out, key=lambda q: (-q.fraction, q.quota, q.key, q.limit))


def series(rows: Iterable[HistoryRow], by: str, since: float, bucket: float, now: float) -> Series:
    """Tokens per bucket per `by` value (user, group, service or model); a row of a user in two groups
    counts for both groups, as in the ledger's summary."""
    first = since - since % bucket
    out = Series([first + i * bucket for i in range(int((now - first) // bucket) + 1)])
    totals: dict[str, dict[str, Any]] = {}
    points: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        keys = {"user": [row.user], "service": [row.service], "model": [row.model]}.get(by) or list(row.groups) or ["-"]
        for key in keys:
            points[key][row.start] += row.input_tokens + row.output_tokens
            total = totals.setdefault(key, {"key": key, "requests": 0, "input": 0, "output": 0, "cost": 0.0})
            total["requests"] += row.requests
            total["input"] += row.input_tokens
            total["output"] += row.output_tokens
            total["cost"] += row.cost
    out.totals = sorted(totals.values(), key=lambda t: (-t["cost"], -(t["input"] + t["output"]), t["key"]))
    out.points = {k: dict(v) for k, v in points.items()}
    return out


def refusals(path: Path | None, now: float, window: float = REFUSAL_WINDOW) -> list[dict[str, Any]]:
    """The access log's refused requests (status >= 400 with a reason) of the last `window` seconds, newest
    first, read from the end of the file (the last LOG_TAIL_BYTES)."""
    if path is None or not path.exists():
        return []
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - LOG_TAIL_BYTES))
        lines = f.read().splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        try:
            entry = orjson.loads(line)
            at = datetime.fromisoformat(entry["time"]).timestamp()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if at < now - window:
            break
        if int(entry.get("status", 0)) >= 400 and entry.get("reason"):
            out.append(entry)
            if len(out) >= MAX_REFUSALS:
                break
    return out


@dataclass(frozen=True, slots=True)
class PeerView:
    session: str
    user: str
    public_key: str
    tunnel_ipv4: str | None
    handshakes: dict[str, datetime | None]
    """Per reporting node: the last handshake (None: the node has the peer, no handshake yet)."""


def nodes_and_peers(
    cache: ResourceCache, status: Callable[[], Mapping[str, NodeStatus]]
) -> tuple[list[tuple[Node, bool]], list[PeerView]]:
    """The registered Nodes (with whether their agent reported in the last minute to this worker) and the
    peer set: every live Session with a WireGuard key, with what the agents report about it."""
    reports = status()
    nodes = sorted((n for n in cache.list_kind("Node") if isinstance(n, Node)), key=lambda n: n.metadata.name)
    seen: dict[str, dict[str, datetime | None]] = defaultdict(dict)
    for node, report in reports.items():
        for peer in report.peers:
            seen[peer.public_key][node] = peer.last_handshake
    peers = [
        PeerView(s.metadata.name, s.spec.user, key, s.spec.tunnel_ipv4, seen.get(key, {}))
        for s in sessions_of(cache, None)
        if (key := s.spec.wg_public_key)
    ]
    return [(n, n.metadata.name in reports) for n in nodes], peers

