"""Parts shared by several kinds: conditions, rules, authorization blocks, secret references, durations."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from cluster.resources.meta import Model, Name

MAX_EXPRESSION_LENGTH = 10_000

Expression = Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_LENGTH)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `30`, `1.5`, `"100ms"`, `"30s"`, `"5m"`, `"2h"`, `"30d"`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (e.g. '500ms', '30s', '5m', '2h', '30d')")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def check_header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value must not contain CR, LF or NUL")
    return value


HeaderName = Annotated[str, BeforeValidator(check_header_name)]
HeaderValue = Annotated[str, BeforeValidator(check_header_value)]


class Effect(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class ConditionList(Model):
    """`all: {of: [...]}` / `any: {of: [...]}`."""

    of: list[Condition] = Field(min_length=1)


class OpaCondition(Model):
    """Inline Rego; the module's `allow` rule decides."""

    inline: Expression


class Condition(Model):
    """Exactly one of: `match` (CEL), `matchAny: true`, `all`, `any`, `not`, `opa`."""

    match: Expression | None = None
    match_any: Literal[True] | None = None
    all: ConditionList | None = None
    any: ConditionList | None = None
    not_: Condition | None = Field(default=None, alias="not")
    opa: OpaCondition | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [
            k for k in ("match", "match_any", "all", "any", "not_", "opa") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a condition needs exactly one of match, matchAny, all, any, not, opa"
                + (f" (got {len(given)})" if given else "")
            )
        return self


class Scope(StrEnum):
    """What a rule governs. A User's or Group's rule reaches the admin API only when it says so: a catch-all
    written for Services (`matchAny: true`) must never open the admin API."""

    SERVICES = "SERVICES"
    ADMIN = "ADMIN"
    ALL = "ALL"


class Rule(Model):
    """One policy rule. Lower `priority` runs first; on equal priority DENY wins."""

    name: Name | None = None
    effect: Effect
    priority: int = Field(default=0, ge=-1000, le=1000)
    scope: Scope = Scope.SERVICES
    condition: Condition


class PolicySpec(Model):
    """The rules of a Policy (also the body of an inline policy)."""

    rules: list[Rule] = Field(default_factory=list)


class InlinePolicy(Model):
    """A policy declared in place; `name` shows in decisions and access logs."""

    name: Name | None = None
    spec: PolicySpec


class Authorization(Model):
    """Policies that apply to a Service, a User or a Group: inline ones and Policy resources by name."""

    inline_policies: list[InlinePolicy] = Field(default_factory=list)
    policies: list[Name] = Field(default_factory=list)


class SecretRef(Model):
    """A reference to one key of a Secret resource (`value` unless `key` says otherwise)."""

    from_secret: Name
    key: str = "value"
