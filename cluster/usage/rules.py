"""UsageRules: the Quotas and Pricings compiled for the request path (built with the gateway state, off it).

A request asks `applicable(user, groups, service)` for the Quotas that govern it, and `price(model)` for what
its tokens cost. Counter keys name the Quota, the limit's measure and window, the `per` key and the window's
number: windows are fixed, aligned to the Unix epoch (a `1d` window ends at 00:00 UTC), so every worker and
node agrees on them without talking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from wardgate.cluster.resources.pricing import Pricing
from wardgate.cluster.resources.quota import FailMode, Quota, QuotaKey

NANO = 1_000_000_000
"""Cost counters count nano-units of the currency (integers: exact in Redis and in the node's file)."""
MAX_CACHED = 100_000


@dataclass(frozen=True, slots=True)
class Who:
    """The caller, as the `per` keys see it."""

    user: str
    groups: tuple[str, ...]
    credential: str | None
    session: str | None


@dataclass(frozen=True, slots=True)
class LimitRule:
    measure: str
    """`requests`, `tokens` or `cost`."""
    amount: int
    """In requests, tokens, or nano-units of the currency."""
    window: float

    @property
    def label(self) -> str:
        return f"{self.measure}/{_window_text(self.window)}"

    def bucket(self, now: float) -> tuple[int, float]:
        """The window's number and the seconds until it ends."""
        number = math.floor(now / self.window)
        return number, (number + 1) * self.window - now


def _window_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One Quota, compiled."""

    name: str
    users: frozenset[str] | None
    groups: frozenset[str] | None
    services: frozenset[str] | None
    per: QuotaKey
    limits: tuple[LimitRule, ...]
    fail_open: bool
    max_reserved_output: int

    def applies(self, who: Who, service: str) -> bool:
        if self.services is not None and service not in self.services:
            return False
        if self.users is None and self.groups is None:
            return True
        return (self.users is not None and who.user in self.users) or (
            self.groups is not None and any(g in self.groups for g in who.groups)
        )

    def keys(self, who: Who, service: str) -> list[str]:
        """The `per` values this caller is counted under (one per matching group for `per: group`)."""
        if self.per is QuotaKey.USER:
            return [f"user={who.user}"]
        if self.per is QuotaKey.GROUP:
            groups = [g for g in who.groups if self.groups is None or g in self.groups]
            return [f"group={g}" for g in groups] or ["group=-"]
        if self.per is QuotaKey.CREDENTIAL:
            return [f"credential={who.credential or '-'}"]
        if self.per is QuotaKey.SESSION:
            return [f"session={who.session or '-'}"]
        return [f"service={service}"]


@dataclass(frozen=True, slots=True)
class Price:
    """Nano-units of the currency per token."""

    input: float
    output: float
    cached_input: float

    def cost(self, input_tokens: int, output_tokens: int, cached: int = 0) -> int:
        cached = min(cached, input_tokens)
        return round((input_tokens - cached) * self.input + cached * self.cached_input + output_tokens * self.output)


FREE = Price(0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class UsageRules:
    quotas: tuple[QuotaRule, ...] = ()
    exact: dict[str, Price] = field(default_factory=dict)
    prefixes: tuple[tuple[str, Price], ...] = ()
    """Longest prefix first; a lone `*` is the empty prefix (every model)."""
    currency: str = "USD"
    _applicable: dict[tuple[str, str, tuple[str, ...]], tuple[QuotaRule, ...]] = field(default_factory=dict)

    def applicable(self, who: Who, service: str) -> tuple[QuotaRule, ...]:
        if not self.quotas:
            return ()
        key = (service, who.user, who.groups)
        found = self._applicable.get(key)
        if found is None:
            if len(self._applicable) >= MAX_CACHED:
                self._applicable.clear()
            found = self._applicable[key] = tuple(q for q in self.quotas if q.applies(who, service))
        return found

    def price(self, model: str | None) -> Price:
        if not model:
            return self.prefixes[-1][1] if self.prefixes and self.prefixes[-1][0] == "" else FREE
        found = self.exact.get(model)
        if found is not None:
            return found
        for prefix, price in self.prefixes:
            if model.startswith(prefix):
                return price
        return FREE


def _quota_rule(quota: Quota) -> QuotaRule:
    spec = quota.spec
    subjects = spec.subjects
    return QuotaRule(
        name=quota.metadata.name,
        users=frozenset(subjects.users) if subjects is not None and subjects.users else None,
        groups=frozenset(subjects.groups) if subjects is not None and subjects.groups else None,
        services=frozenset(spec.services) if spec.services is not None else None,
        per=spec.per,
        limits=tuple(
            LimitRule(
                limit.measure,
                round(limit.amount * NANO) if limit.measure == "cost" else int(limit.amount),
                limit.window,
            )
            for limit in spec.limits
        ),
        fail_open=spec.fail_mode is FailMode.OPEN,
        max_reserved_output=spec.max_reserved_output_tokens,
    )


def compile_usage(quotas: Iterable[Quota], pricings: Sequence[Pricing]) -> UsageRules:
    """Compile every Quota and the prices of every Pricing (a model priced twice: the Pricing whose name
    sorts first wins, so the result does not depend on the order the store lists them in)."""
    exact: dict[str, Price] = {}
    prefixes: dict[str, Price] = {}
    currency = "USD"
    for pricing in sorted(pricings, key=lambda p: p.metadata.name, reverse=True):
        currency = pricing.spec.currency
        for entry in pricing.spec.models:
            cached = entry.cached_input if entry.cached_input is not None else entry.input
            price = Price(entry.input * NANO / 1e6, entry.output * NANO / 1e6, cached * NANO / 1e6)
            if entry.model.endswith("*"):
                prefixes[entry.model[:-1]] = price
            else:
                exact[entry.model] = price
    ordered = tuple(sorted(prefixes.items(), key=lambda item: -len(item[0])))
    rules = tuple(_quota_rule(q) for q in sorted(quotas, key=lambda q: q.metadata.name))
    return UsageRules(rules, exact, ordered, currency)
