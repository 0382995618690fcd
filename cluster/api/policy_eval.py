"""`POST /api/v1/policy/eval`: the decision the gateway would make for a user, a Service and a request,
without sending traffic (`wardgatectl policy eval`). For an MCP Service, `mcp: {method, name, arguments}` is
the JSON-RPC call decided (`ctx.request.mcp`); the request then defaults to that call POSTed to `/mcp`."""

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
        mcp: Mapping[str, Any] | None = None,
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


MCP_NAMED_BY = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}
"""Where a method's `ctx.request.mcp.name` sits in its params: proxy.mcp_rpc.NAMED_BY, which api may not import."""


def mcp_call(value: object) -> dict[str, Any] | None:
    """`ctx.request.mcp` from the request's `mcp` field; Invalid naming the field otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("method"), str) or not value["method"]:
        raise Invalid("mcp must be {method, name?, arguments?} with method a non-empty string")
    name, arguments = value.get("name", ""), value.get("arguments", {})
    if not isinstance(name, str):
        raise Invalid("mcp.name must be a string (the tool or prompt name, or the resource URI)")
    if not isinstance(arguments, dict):
        raise Invalid("mcp.arguments must be a JSON object")
    unknown = set(value) - {"method", "name", "arguments"}
    if unknown:
        raise Invalid(f"mcp has unknown fields: {', '.join(sorted(unknown))}")
    return {"method": value["method"], "name": name, "arguments": arguments}


def mcp_message(call: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-RPC request the gateway would have parsed `call` from (the body policies see)."""
    params: dict[str, Any] = {}
    key = MCP_NAMED_BY.get(call["method"])
    if key is not None and call["name"]:
        params[key] = call["name"]
    if call["arguments"]:
        params["arguments"] = call["arguments"]
    return {"jsonrpc": "2.0", "id": 1, "method": call["method"], **({"params": params} if params else {})}


async def evaluate(evaluator: PolicyEvaluator, request: web.Request) -> web.Response:
    spec = await json_body(request)
    if not isinstance(spec, dict) or not isinstance(spec.get("service"), str) or not isinstance(spec.get("user"), str):
        raise Invalid("expected {service, user, method?, path?, headers?, body?, sessionType?, mcp?}")
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise Invalid("headers must be a map of strings")
    mcp = mcp_call(spec.get("mcp"))
    body = spec.get("body")
    if mcp is not None and body is None:
        body = mcp_message(mcp)
    outcome = evaluator.evaluate_request(
        service=spec["service"],
        user=spec["user"],
        method=str(spec.get("method", "POST")),
        target=str(spec.get("path", "/mcp" if mcp is not None else "/v1/chat/completions")),
        headers={"content-type": "application/json", **headers},
        body=_body_bytes(body),
        session_type=str(spec.get("sessionType", "CLIENTLESS")),
        mcp=mcp,
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
