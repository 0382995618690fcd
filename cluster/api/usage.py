"""Usage routes of the admin API: the ledger summarised (`wardgatectl usage`), and each Quota's current use
for its busiest keys (`wardgatectl get quotas`), read from the live counters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from wardgate.cluster.authorize.state import GatewayState
from wardgate.cluster.errors import Invalid, Unavailable
from wardgate.cluster.resources.types import parse_duration
from wardgate.cluster.usage.ledger import BY, Ledger
from wardgate.cluster.usage.meter import Meter
from wardgate.cluster.usage.rules import NANO, QuotaRule

LEDGER: web.AppKey[Ledger] = web.AppKey("usage_ledger")
METER = web.AppKey("usage_meter", Meter)
STATE: web.AppKey[Callable[[], GatewayState]] = web.AppKey("usage_state")
BUSIEST = 5


async def usage_summary(request: web.Request) -> web.Response:
    """`?by=user|group|credential|session|service|model|config&since=24h`: totals per key, costliest first."""
    by = request.query.get("by", "user")
    if by not in BY:
        raise Invalid(f"by must be one of {', '.join(BY)}")
    try:
        since = parse_duration(request.query.get("since", "24h"))
    except ValueError as exc:
        raise Invalid(f"since: {exc}") from None
    items = await request.app[LEDGER].summary(by, time.time() - since)
    currency = request.app[STATE]().usage.currency
    since_text = request.query.get("since", "24h")
    return web.json_response({"by": by, "since": since_text, "currency": currency, "items": items})


async def _busiest(meter: Meter, ledger: Ledger, quota: QuotaRule) -> list[dict[str, Any]]:
    now = time.time()
    longest = max(limit.window for limit in quota.limits)
    services = sorted(quota.services) if quota.services is not None else None
    if quota.per.value == "service" and services is not None:
        values = services
    else:
        values = await ledger.keys(quota.per.value, now - longest, services)
    rows: list[dict[str, Any]] = []
    refs = []
    for value in values:
        for limit in quota.limits:
            number, reset = limit.bucket(now)
            refs.append((value, limit, f"{quota.name}|{limit.label}|{quota.per.value}={value}|{number}", reset))
    if not refs:
        return []
    counted = await meter.counters.read([key for _, _, key, _ in refs])
    per_value: dict[str, dict[str, Any]] = {}
    for (value, limit, _, reset), used in zip(refs, counted, strict=True):
        scale = NANO if limit.measure == "cost" else 1
        entry = per_value.setdefault(value, {"key": f"{quota.per.value}={value}", "limits": [], "fraction": 0.0})
        fraction = used / limit.amount
        entry["limits"].append(
            {"limit": limit.label, "used": used / scale, "max": limit.amount / scale, "resetsIn": round(reset)}
        )
        entry["fraction"] = max(entry["fraction"], fraction)
    rows = sorted(per_value.values(), key=lambda e: -e["fraction"])
    return [r for r in rows if r["fraction"] > 0][:BUSIEST]


async def quota_usage(request: web.Request) -> web.Response:
    """Every Quota with the keys nearest their limits (exact: read from the counters the gateway uses)."""
    rules = request.app[STATE]().usage
    out = []
    for quota in rules.quotas:
        try:
            busiest: list[dict[str, Any]] | str = await _busiest(request.app[METER], request.app[LEDGER], quota)
        except Unavailable as exc:
            busiest = str(exc)
        out.append({"name": quota.name, "per": quota.per.value, "busiest": busiest})
    return web.json_response({"items": out})


def install(app: web.Application, ledger: Ledger, meter: Meter, state: Callable[[], GatewayState]) -> None:
    app[LEDGER] = ledger
    app[METER] = meter
    app[STATE] = state
    app.router.add_get("/api/v1/usage", usage_summary)
    app.router.add_get("/api/v1/quota-usage", quota_usage)
