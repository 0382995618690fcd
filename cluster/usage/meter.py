"""The meter: one per worker. Per request, a Metering reads the caller's counters (`ctx.usage`), reserves an
estimate before the upstream call, and settles afterwards, off the request path.

    begin(rules, who, service) ─▶ the Quotas that apply; their counters (one per limit and `per` key)
    current()  ─▶ ctx.usage (one read)                    counters unreachable: noted, reserve() decides
    reserve(body, model) ─▶ one atomic charge: 1 request, prompt estimate + min(max_tokens, the Quota's
        maxReservedOutputTokens) tokens, their cost ─▶ None (go on), Exceeded (429) or Unreachable (503)
    finish(record, reported, produced) ─▶ real usage (reported, else estimated from the produced text),
        cost ─▶ queued: the counters' adjustment (real - reserved); the ledger row to the LedgerWriter
    run() ─▶ drains the adjustments every SETTLE_INTERVAL, and runs the LedgerWriter beside (ledger_writer.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.observability.record import AccessRecord, QuotaRecord
from wardgate.cluster.usage.counters import Charge, Counters
from wardgate.cluster.usage.extract import Usage, prompt_text, requested_output
from wardgate.cluster.usage.ledger import Ledger, LedgerRow
from wardgate.cluster.usage.ledger_writer import LedgerWriter
from wardgate.cluster.usage.rules import FREE, NANO, LimitRule, Price, QuotaRule, UsageRules, Who
from wardgate.cluster.usage.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SETTLE_INTERVAL = 0.25
DEFAULT_OUTPUT = 1024
"""Output tokens reserved when the client sets no `max_tokens` (capped by the Quota's maxReservedOutputTokens)."""
MEASURES = ("requests", "tokens", "cost")


def _measure_doc(used: float, limit: float) -> dict[str, Any]:
    return {
        "used": used,
        "limit": limit,
        "remaining": max(limit - used, 0) if limit else 0,
        "fraction": (used / limit) if limit else 0.0,
    }


EMPTY_USAGE: Mapping[str, Any] = {
    **{m: _measure_doc(0.0 if m == "cost" else 0, 0.0 if m == "cost" else 0) for m in MEASURES},
    "quotas": {},
}
"""`ctx.usage` when no Quota applies: every measure present (used 0, limit 0 = none), so policies need no has()."""


@dataclass(frozen=True, slots=True)
class CounterRef:
    quota: QuotaRule
    limit: LimitRule
    key: str
    reset: float
    """Seconds until its window ends."""


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A limit the request would pass: 429."""

    counter: CounterRef
    used: int
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The counters cannot be reached and a fail-closed Quota applies: 503."""

    quota: str
    reason: str


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: `20ms`, `6s`, `1m30s`, `2h0m0s`."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    whole = int(seconds + 0.999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class Metering:
    """One request's quota accounting (see the module docstring)."""

    meter: Meter
    rules: UsageRules
    who: Who
    service: str
    counters: list[CounterRef]
    price: Price = FREE
    values: list[int] | None = None
    down: str | None = None
    reserved: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    body: Mapping[str, Any] | None = None
    charged: bool = False

    async def current(self) -> Mapping[str, Any]:
        """`ctx.usage`: for each measure the tightest counter (used, limit, remaining, fraction; cost in the
        currency), and the same per Quota under `quotas`."""
        if not self.counters:
            return EMPTY_USAGE
        try:
            self.values = await self.meter.counters.read([c.key for c in self.counters])
        except Unavailable as exc:
            self.down = str(exc)
            return EMPTY_USAGE
        return usage_doc(self.counters, self.values)

    async def reserve(
        self, body: Mapping[str, Any], model: str | None, record: AccessRecord
    ) -> Exceeded | Unreachable | None:
        self.price = self.rules.price(model)
        self.body = body
        if not self.counters:
            return None
        if any(c.limit.measure != "requests" for c in self.counters):
            self._count_prompt()
        asked = requested_output(body)
        charges: list[Charge] = []
        for c in self.counters:
            output = min(asked if asked is not None else DEFAULT_OUTPUT, c.quota.max_reserved_output)
            if c.limit.measure == "requests":
                amount = 1
            elif c.limit.measure == "tokens":
                amount = (self.prompt_tokens or 0) + output
            else:
                amount = self.price.cost(self.prompt_tokens or 0, output)
            charges.append(Charge(c.key, amount, c.limit.amount, c.reset))
        if self.down is None:
            try:
                charged = await self.meter.counters.charge(charges)
            except Unavailable as exc:
                self.down = str(exc)
        if self.down is not None:
            return self._unreachable(record)
        if charged.refused is not None:
            counter = self.counters[charged.refused]
            used = charged.values[charged.refused]
            record.quota = QuotaRecord(counter.quota.name, counter.limit.measure, counter.limit.label, "refused")
            return Exceeded(counter, used, rate_headers(self.counters, charged.values, counter))
        self.charged, self.reserved, self.values = True, [c.amount for c in charges], charged.values
        return None

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers of an admitted request (its own charge counted); none when no Quota applies
        or the counters were not charged (unreachable, failMode open)."""
        return limit_headers(self.counters, self.values) if self.charged and self.values is not None else {}

    def _count_prompt(self) -> None:
        """The prompt's tokens, counted only when a token or cost limit or an estimate needs them (a tokenizer
        pass is not free, and runs on the event loop)."""
        if self.prompt_tokens is None:
            self.prompt_tokens = self.meter.tokenizer.count_prompt(prompt_text(self.body)) if self.body else 0

    def _unreachable(self, record: AccessRecord) -> Unreachable | None:
        closed = [c.quota.name for c in self.counters if not c.quota.fail_open]
        if closed:
            record.quota = QuotaRecord(closed[0], None, None, "unavailable")
            return Unreachable(closed[0], self.down or "counters unavailable")
        record.quota = QuotaRecord(self.counters[0].quota.name, None, None, "fail-open")
        self.meter.misses += 1
        log.warning("quota counters unavailable; failMode open lets the request through: %s", self.down)
        return None

    def finish(self, record: AccessRecord, reported: Usage | None, produced: bytes) -> None:
        """Settle: real usage into the record, the adjustment and the ledger row onto the meter's queue."""
        called = record.upstream_status is not None
        usage = reported
        if usage is None and called and (record.upstream_status or 500) < 400 and record.model:
            self._count_prompt()
            output = self.meter.tokenizer.count(produced.decode("utf-8", "replace")) if produced else 0
            usage = Usage(self.prompt_tokens or 0, output, estimated=True)
        cost = self.price.cost(usage.input, usage.output, usage.cached) if usage is not None else 0
        if usage is not None:
            record.usage = usage.as_record()
            record.usage_estimated = usage.estimated or None
            record.cost = cost / NANO if self.price is not FREE else None
        if self.charged:
            deltas: list[tuple[str, int, float]] = []
            for c, reserved in zip(self.counters, self.reserved, strict=True):
                if c.limit.measure == "tokens":
                    deltas.append((c.key, (usage.total if usage else 0) - reserved, c.reset))
                elif c.limit.measure == "cost":
                    deltas.append((c.key, cost - reserved, c.reset))
            self.meter.settle([d for d in deltas if d[1] != 0])
        if called and (usage is not None or record.model):
            self.meter.log(_row(record, self.who, usage or Usage(), cost))


def _row(record: AccessRecord, who: Who, usage: Usage, cost: int) -> LedgerRow:
    return LedgerRow(
        time.time(),
        who.user,
        who.groups,
        who.credential,
        who.session,
        record.service or "",
        record.config,
        record.upstream_model or record.model,
        usage.input,
        usage.output,
        usage.cached,
        usage.reasoning,
        cost / NANO,
        usage.estimated,
        record.status if record.status != 500 or record.upstream_status is None else record.upstream_status,
        record.request_id,
    )


def usage_doc(counters: list[CounterRef], values: list[int]) -> dict[str, Any]:
    tightest: dict[str, tuple[float, float]] = {}
    quotas: dict[str, dict[str, tuple[float, float]]] = {}
    for c, value in zip(counters, values, strict=True):
        scale = NANO if c.limit.measure == "cost" else 1
        entry = (value / scale, c.limit.amount / scale) if scale != 1 else (value, c.limit.amount)
        for where in (tightest, quotas.setdefault(c.quota.name, {})):
            seen = where.get(c.limit.measure)
            if seen is None or entry[0] / entry[1] > seen[0] / seen[1]:
                where[c.limit.measure] = entry
    doc: dict[str, Any] = {m: _measure_doc(*tightest[m]) if m in tightest else EMPTY_USAGE[m] for m in MEASURES}
    doc["quotas"] = {
        name: {m: _measure_doc(*entry) for m, entry in measures.items()} for name, measures in quotas.items()
    }
    return doc


def rate_headers(counters: list[CounterRef], values: list[int], refused: CounterRef) -> dict[str, str]:
    """limit_headers, and Retry-After for the counter that refused."""
    headers = limit_headers(counters, values)
    headers["Retry-After"] = str(max(1, int(refused.reset + 0.999)))
    return headers


def limit_headers(counters: list[CounterRef], values: list[int]) -> dict[str, str]:
    """x-ratelimit-limit/remaining/reset-requests and -tokens as OpenAI sends them, for the tightest counter
    of each measure (the least remaining); none for a measure no Quota limits."""
    headers: dict[str, str] = {}
    for measure in ("requests", "tokens"):
        best: tuple[int, CounterRef] | None = None
        for c, value in zip(counters, values, strict=True):
            if c.limit.measure == measure:
                remaining = max(c.limit.amount - value, 0)
                if best is None or remaining < best[0]:
                    best = (remaining, c)
        if best is not None:
            headers[f"x-ratelimit-limit-{measure}"] = str(best[1].limit.amount)
            headers[f"x-ratelimit-remaining-{measure}"] = str(best[0])
            headers[f"x-ratelimit-reset-{measure}"] = reset_text(best[1].reset)
    return headers


class Meter:
    """Per worker: hands out Meterings and settles them in the background (`run`, a task of the process)."""

    def __init__(
        self,
        counters: Counters,
        writer: LedgerWriter | None = None,
        tokenizer: Tokenizer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counters = counters
        self.writer = writer
        self.ledger: Ledger | None = writer.ledger if writer is not None else None
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self.misses = 0
        """Requests let through by `failMode: open` while the counters were unreachable (a metric reads it)."""
        self._clock = clock
        self._deltas: list[tuple[str, int, float]] = []
        self._wake = asyncio.Event()

    def begin(self, rules: UsageRules, who: Who, service: str) -> Metering:
        now = self._clock()
        counters: list[CounterRef] = []
        for quota in rules.applicable(who, service):
            values = quota.keys(who, service)
            for limit in quota.limits:
                number, reset = limit.bucket(now)
                for value in values:
                    key = f"{quota.name}|{limit.label}|{value}|{number}"
                    counters.append(CounterRef(quota, limit, key, reset))
        return Metering(self, rules, who, service, counters)

    def settle(self, deltas: list[tuple[str, int, float]]) -> None:
        if deltas:
            self._deltas.extend(deltas)
            self._wake.set()

    def log(self, row: LedgerRow) -> None:
        if self.writer is not None:
            self.writer.add(row)

    async def flush(self) -> None:
        deltas, self._deltas = self._deltas, []
        if deltas:
            merged: dict[str, tuple[int, float]] = {}
            for key, delta, ttl in deltas:
                before = merged.get(key, (0, ttl))
                merged[key] = (before[0] + delta, max(before[1], ttl))
            try:
                await self.counters.adjust([(k, d, t) for k, (d, t) in merged.items() if d])
            except Unavailable as exc:
                log.warning("quota reconciliation of %d counters dropped: %s", len(merged), exc)

    async def run(self) -> None:
        await asyncio.to_thread(self.tokenizer.load)
        async with asyncio.TaskGroup() as tasks:
            if self.writer is not None:
                tasks.create_task(self.writer.run())
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), SETTLE_INTERVAL)
                    self._wake.clear()
                    await self.flush()
            finally:
                await asyncio.shield(self.flush())
