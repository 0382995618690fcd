"""`POST /api/v1/policy/eval`: the decision the gateway would make for a user, a Service and a request,
without sending traffic (`wardgatectl policy eval`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from wardgate.cluster.api.bodies import json_body
from wardgate.cluster.authorize.admit import Admission, Refusal
from wardgate.cluster.errors import Invalid, NotFound, Refused
from wardgate.cluster.policy.engine import Decision


class PolicyEvaluator(Protocol):
    def evaluate_request(
        self,
        *,
        service: str,
        user: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        session_type: str = "CLIENTLESS",
        ip: str = "127.0.0.1",
    ) -> Admission | Refusal: ...


def decision_json(decision: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {"effect": decision.effect.value, "reason": decision.reason.value}
    if decision.rule is not None:
        out.update(policy=decision.rule.policy, rule=decision.rule.rule)
    if decision.detail:
        out["detail"] = decision.detail
    return out


def _body_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


async def evaluate(evaluator: PolicyEvaluator, request: web.Request) -> web.Response:
    spec = await json_body(request)
    if not isinstance(spec, dict) or not isinstance(spec.get("service"), str) or not isinstance(spec.get("user"), str):
        raise Invalid("expected {service, user, method?, path?, headers?, body?, sessionType?}")
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise Invalid("headers must be a map of strings")
    outcome = evaluator.evaluate_request(
        service=spec["service"],
        user=spec["user"],
        method=str(spec.get("method", "POST")),
        target=str(spec.get("path", "/v1/chat/completions")),
        headers={"content-type": "application/json", **headers},
        body=_body_bytes(spec.get("body")),
        session_type=str(spec.get("sessionType", "CLIENTLESS")),
    )
    if isinstance(outcome, Admission):
        route = outcome.route.name if outcome.route is not None else None
        return web.json_response(
            {"decision": decision_json(outcome.decision), "config": route, "notes": list(outcome.notes), "status": 200}
        )
    if outcome.refused in (Refused.UNKNOWN_SERVICE, Refused.NO_POLICIES) and outcome.decision is None:
        raise NotFound(outcome.reason)
    decision = (
        decision_json(outcome.decision)
        if outcome.decision is not None
        else {"effect": "DENY", "reason": outcome.reason}
    )
    return web.json_response(
        {"decision": decision, "config": outcome.config, "notes": list(outcome.notes), "status": outcome.refused.status}
    )
