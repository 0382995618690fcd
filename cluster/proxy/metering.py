"""The gateway's side of quotas and the usage ledger (the accounting itself is cluster/usage/meter.py).

    identified ─▶ begin(): the Quotas that apply, `ctx.usage` read ─▶ admit (policies and dynamic routes
    see ctx.usage) ─▶ gate(): the estimate reserved, or 429 (OpenAI's shape and x-ratelimit-* headers) or
    503 (counters unreachable, failMode closed); a budgeted stream asks the provider for its usage
    ─▶ upstream ─▶ limit_headers(): an answer under a Quota carries its x-ratelimit-* headers
    ─▶ settle() when the exchange ends (answered, failed, or left by the client)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from wardgate.cluster.authorize.state import GatewayState
from wardgate.cluster.errors import Refused
from wardgate.cluster.identity.authenticate import Identity
from wardgate.cluster.observability.otlp import SpanKind
from wardgate.cluster.proxy.exchange import Exchange
from wardgate.cluster.proxy.llm import request_model
from wardgate.cluster.usage.meter import EMPTY_USAGE, Exceeded, Meter, reset_text
from wardgate.cluster.usage.rules import NANO, Who

NO_RETRY_AFTER = 60
"""Past this wait a refusal tells SDKs not to retry on their own (`x-should-retry: false`)."""


def who_of(identity: Identity) -> Who:
    user = identity.user
    return Who(
        user.metadata.name,
        tuple(user.spec.groups),
        identity.credential.metadata.name if identity.credential else None,
        identity.session.metadata.name if identity.session else None,
    )


async def begin(ex: Exchange, meter: Meter, state: GatewayState, service: str, identity: Identity) -> Mapping[str, Any]:
    """Start the exchange's metering; returns `ctx.usage`."""
    metering = ex.metering = meter.begin(state.usage, who_of(identity), service)
    if not metering.counters:
        return EMPTY_USAGE
    return await metering.current()


def _amount(measure: str, value: float) -> str:
    return f"{value / NANO:.2f}" if measure == "cost" else str(int(value))


async def gate(ex: Exchange, body: Mapping[str, Any]) -> web.Response | None:
    """Reserve the request's estimate; the refusal's response when a limit or the counters stop it."""
    metering, record = ex.metering, ex.record
    if metering is None:
        return None
    if record.model is None:
        record.model = request_model(body, ex.request.path)
    started = time.perf_counter()
    verdict = await metering.reserve(body, record.upstream_model or record.model, record)
    if record.quota is not None and ex.traced:
        q = record.quota
        attributes: dict[str, Any] = {"wardgate.quota": q.name, "wardgate.quota.outcome": q.outcome}
        if q.window:
            attributes.update({"wardgate.quota.measure": q.measure, "wardgate.quota.window": q.window})
        ex.span("quota", started, attributes, SpanKind.INTERNAL)
    if verdict is None:
        _ask_stream_usage(ex, body)
        return None
    if not isinstance(verdict, Exceeded):
        return ex.refuse(Refused.QUOTA_UNAVAILABLE, f"quota {verdict.quota}: {verdict.reason} (failMode closed)")
    counter, limit = verdict.counter, verdict.counter.limit
    window = limit.label.partition("/")[2]
    used, allowed = _amount(limit.measure, verdict.used), _amount(limit.measure, limit.amount)
    if limit.measure == "cost":
        currency = metering.rules.currency
        refused = Refused.QUOTA_EXHAUSTED
        message = (
            f"You exceeded your budget on quota '{counter.quota.name}': {allowed} {currency} per {window} "
            f"(used {used}). It resets in {reset_text(counter.reset)}."
        )
    else:
        refused = Refused.RATE_LIMITED
        message = (
            f"Rate limit reached for {limit.measure} on quota '{counter.quota.name}': limit {allowed} per "
            f"{window}, used {used}. Please try again in {reset_text(counter.reset)}."
        )
    response = ex.refuse(refused, f"quota {counter.quota.name}: {limit.label} limit {allowed} reached", message)
    response.headers.update(verdict.headers)
    if counter.reset > NO_RETRY_AFTER:
        response.headers["x-should-retry"] = "false"
    return response


def _ask_stream_usage(ex: Exchange, body: Mapping[str, Any]) -> None:
    """A token or cost budget needs the real usage of an OpenAI chat stream: ask for it if the client did not
    (the tap hides that extra chunk from the client)."""
    metering = ex.metering
    if metering is None or body.get("stream") is not True or "messages" not in body or ex.facts is None:
        return
    if not any(c.limit.measure != "requests" for c in metering.counters):
        return
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return
    changed = {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
    ex.facts = replace(ex.facts, body=orjson.dumps(changed))
    ex.strip_usage = True


def limit_headers(ex: Exchange, response: web.StreamResponse) -> None:
    """An admitted request under a Quota answers with its tightest limits as OpenAI does (x-ratelimit-*);
    the upstream's own (its account's limits, shared by every caller) are replaced, not mixed in."""
    headers = ex.metering.headers() if ex.metering is not None else None
    if not headers:
        return
    for name in [n for n in response.headers if n.lower().startswith("x-ratelimit-")]:
        response.headers.popall(name, None)
    response.headers.update(headers)


def settle(ex: Exchange) -> None:
    """The exchange ended: real (or estimated) usage and cost into the record; adjustment and ledger queued."""
    if ex.metering is None:
        return
    tap = ex.tap
    reported = tap.reported() if tap is not None else None
    ex.metering.finish(ex.record, reported, tap.produced() if tap is not None and reported is None else b"")
