"""Policy: named, reusable rules, attached to Services, Users and Groups through their `authorization`; and the
parts every policy is made of (conditions, rules, scopes, the `authorization` block)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource

MAX_EXPRESSION_LENGTH = 10_000

Expression = Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_LENGTH)]


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
        given = [k for k in ("match", "match_any", "all", "any", "not_", "opa") if getattr(self, k) is not None]
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


class Policy(Resource[PolicySpec, EmptyStatus]):
    """A Policy resource."""

    kind_name = "Policy"
    plural = "policies"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
