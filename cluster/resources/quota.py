"""Quota: request, token and cost limits per window, for chosen callers of chosen Services.

Every Quota that applies to a request is checked and the tightest wins. Counters are kept per `per` key
(the caller's user, each of its groups, its credential, its session, or the Service) and per fixed window.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource
from wardgate.cluster.resources.types import Duration

MAX_WINDOW = 366 * 86400.0


class QuotaKey(StrEnum):
    """What a counter is kept for."""

    USER = "user"
    GROUP = "group"
    CREDENTIAL = "credential"
    SESSION = "session"
    SERVICE = "service"


class FailMode(StrEnum):
    """When the counter store cannot answer: `closed` refuses (503), `open` lets the request through."""

    CLOSED = "closed"
    OPEN = "open"


class QuotaSubjects(Model):
    """Who the Quota applies to: any of these users, or members of any of these groups."""

    users: list[Name] = Field(default_factory=list)
    groups: list[Name] = Field(default_factory=list)


class QuotaLimit(Model):
    """Exactly one of `requests`, `tokens` (input + output) or `cost` (in the Pricing currency) per `window`."""

    requests: int | None = Field(default=None, ge=1, le=10**12)
    tokens: int | None = Field(default=None, ge=1, le=10**15)
    cost: float | None = Field(default=None, gt=0, le=10**9)
    window: Duration

    @model_validator(mode="after")
    def _one_measure(self) -> QuotaLimit:
        given = [name for name in ("requests", "tokens", "cost") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a limit needs exactly one of requests, tokens, cost" + (f" (got {given})" if given else "")
            )
        if self.window > MAX_WINDOW:
            raise ValueError("a window is at most 366d")
        if self.window < 1:
            raise ValueError("a window is at least 1s")
        return self

    @property
    def measure(self) -> str:
        return "requests" if self.requests is not None else "tokens" if self.tokens is not None else "cost"

    @property
    def amount(self) -> float:
        value = self.requests if self.requests is not None else self.tokens if self.tokens is not None else self.cost
        assert value is not None
        return float(value)


class QuotaSpec(Model):
    """`subjects` omitted: everyone; `services` omitted: every Service.

    `maxReservedOutputTokens` caps what one call reserves for its answer before it runs (from `max_tokens`):
    a client asking for a huge `max_tokens` cannot hold the budget it shares with others; the real usage is
    charged afterwards."""

    subjects: QuotaSubjects | None = None
    services: list[Name] | None = None
    per: QuotaKey = QuotaKey.USER
    limits: list[QuotaLimit] = Field(min_length=1, max_length=16)
    fail_mode: FailMode = FailMode.CLOSED
    max_reserved_output_tokens: int = Field(default=4096, ge=0, le=10**7)


class Quota(Resource[QuotaSpec, EmptyStatus]):
    """A Quota resource."""

    kind_name = "Quota"
    plural = "quotas"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
