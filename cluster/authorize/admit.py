"""admit: the one admission decision, a pure function of (compiled state, caller, request facts).

    target (a Service, or the admin API) ─▶ principal (the caller's compiled rules) ─▶ body: parsed into
    `bodyMap` only up to the target's parse limit, and only when something reads it ─▶ ctx (facts.py)
    ─▶ dynamic config (first matching rule) ─▶ the merged rules (Service + User + Groups; for the admin
    API: `[admin] policies` + the caller's ADMIN-scoped rules) ─▶ Admission, or Refusal with its reason

The gateway, the tunnel listener, the admin API and `wardgatectl policy eval` call it and nothing else,
so they cannot disagree. No I/O, no awaiting, no compiling: everything was compiled into the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wardgate.cluster.authorize.facts import RequestFacts, policy_context, session_doc
from wardgate.cluster.authorize.state import ADMIN_SERVICE, GatewayState, Principal, Route, ServicePipeline
from wardgate.cluster.errors import Refused
from wardgate.cluster.identity.authenticate import Identity
from wardgate.cluster.policy.context import TooManyValues, parse_body_map
from wardgate.cluster.policy.engine import Decision, EvalInput, RuleSet, evaluate

ADMIN_DOC: dict[str, Any] = {"metadata": {"name": ADMIN_SERVICE}, "spec": {"isPublic": False}}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the user's name and `ctx.session`."""

    user: str
    session: Mapping[str, Any]

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        return cls(identity.user.metadata.name, session_doc(identity))


@dataclass(frozen=True, slots=True)
class Admission:
    """Allowed: what the rest of the request path needs. `route` is None on the admin API."""

    pipe: ServicePipeline | None
    principal: Principal
    route: Route | None
    decision: Decision
    inp: EvalInput
    notes: tuple[str, ...]

    @property
    def body_map(self) -> Mapping[str, Any]:
        http: Mapping[str, Any] = self.inp.ctx["request"]["http"]  # type: ignore[index]
        body_map: Mapping[str, Any] = http["bodyMap"]
        return body_map


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refused: how (the table in cluster/errors.py) and why (for the access log, never for the caller)."""

    refused: Refused
    reason: str
    decision: Decision | None = None
    notes: tuple[str, ...] = ()
    config: str | None = None


def _body_map(facts: RequestFacts, parse_limit: int, max_values: int) -> Mapping[str, Any] | None:
    """The parsed body, {} when it is not a JSON object, None when it is over the parse limits (bytes, or JSON
    values): then it is not handed to anything."""
    if len(facts.body) > parse_limit:
        return None
    try:
        return parse_body_map(facts.body, facts.content_type, max_values)
    except TooManyValues:
        return None


def admit(
    state: GatewayState,
    caller: Caller,
    facts: RequestFacts,
    target: str,
    usage: Mapping[str, Any] | None = None,
    mcp: Mapping[str, Any] | None = None,
) -> Admission | Refusal:
    """Decide one request to `target` (a Service name, or ADMIN_SERVICE for the admin API); `usage` is
    `ctx.usage`, the caller's quota counters read before the decision (the gateway's); `mcp` is
    `ctx.request.mcp`, one JSON-RPC call to an MCP Service (each call of a request is decided on its own)."""
    principal = state.principals.get(caller.user)
    if target == ADMIN_SERVICE:
        if principal is None:
            return Refusal(Refused.NO_POLICIES, f"user {caller.user!r} has no compiled policies")
        inp = EvalInput(policy_context(principal.doc, caller.session, ADMIN_DOC, facts, {}))
        decision = evaluate(RuleSet.merge(state.admin, principal.admin_rules), inp)
        if not decision.allowed:
            where = f" ({decision.rule})" if decision.rule else ""
            return Refusal(Refused.FORBIDDEN, f"admin API denied: {decision.reason.value}{where}", decision)
        return Admission(None, principal, None, decision, inp, ())
    pipe = state.services.get(target)
    if pipe is None:
        return Refusal(Refused.UNKNOWN_SERVICE, f"service/{target} not found (or it failed to compile)")
    if principal is None:
        return Refusal(Refused.NO_POLICIES, f"user {caller.user!r} has no compiled policies")
    if len(facts.body) > pipe.max_request_bytes:
        return Refusal(Refused.TOO_LARGE, "request body over the limit")
    body_map = _body_map(facts, pipe.parse_limit, pipe.max_values)
    inp = EvalInput(policy_context(principal.doc, caller.session, pipe.doc, facts, body_map or {}, usage, mcp))
    if body_map is None and pipe.dynamic_reads_body:
        return Refusal(Refused.TOO_LARGE_TO_INSPECT, "request body over the parse limit; dynamic config reads it")
    route, notes = pipe.pick_route(inp)
    if route is None:
        return Refusal(Refused.NO_ROUTE, "no config matched", notes=tuple(notes))
    if len(facts.body) > route.config.http.body.max_request_bytes:
        return Refusal(Refused.TOO_LARGE, "request body over the limit", notes=tuple(notes), config=route.name)
    rules = state.rules_for(pipe, principal)
    if body_map is None and (rules.reads_body or route.plugins.names):
        what = "a plugin" if route.plugins.names else "a policy"
        return Refusal(
            Refused.TOO_LARGE_TO_INSPECT,
            f"request body over the parse limit; {what} reads it",
            notes=tuple(notes),
            config=route.name,
        )
    decision = evaluate(rules, inp)
    if not decision.allowed:
        return Refusal(
            Refused.FORBIDDEN, decision.reason.value, decision, tuple(notes), route.name
        )
    return Admission(pipe, principal, route, decision, inp, tuple(notes))
