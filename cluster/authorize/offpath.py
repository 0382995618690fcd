"""Decisions off the proxied request path, through the same `admit` as the gateway:

- the admin API, governed by the Policies named in `[admin] policies` (default `cluster-admins`, made by
  `init`: ALLOW for group `admins`) and by the caller's User and Group rules of scope ADMIN or ALL only:
  a rule written for Services (`matchAny: true` for "this team may use every Service") never reaches it;
- `wardgatectl policy eval`: what the gateway would decide for a user, a Service and a request (for an MCP
  Service, one JSON-RPC call: `ctx.request.mcp`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from yarl import URL

from wardgate.cluster.authorize.admit import Admission, Caller, Refusal, admit
from wardgate.cluster.authorize.facts import RequestFacts
from wardgate.cluster.authorize.state import ADMIN_SERVICE, GatewayState
from wardgate.cluster.errors import Forbidden, Refused
from wardgate.cluster.identity.authenticate import Identity


class AdminAccess:
    """`AdminPolicy` for the admin application (api/auth.py)."""

    def __init__(self, state: Callable[[], GatewayState], domain: str) -> None:
        self._state = state
        self._domain = domain

    def authorize_admin(self, identity: Identity, method: str, url: URL, headers: Mapping[str, str], ip: str) -> None:
        """Return when policy allows this admin request; Forbidden (message: the reason) otherwise."""
        facts = RequestFacts.of(method, url, headers, host=self._domain, scheme="https", ip=ip)
        outcome = admit(self._state(), Caller.of(identity), facts, ADMIN_SERVICE)
        if isinstance(outcome, Refusal):
            raise Forbidden(outcome.reason)


class PolicyEvaluation:
    """`PolicyEvaluator` for `POST /api/v1/policy/eval`."""

    def __init__(self, state: Callable[[], GatewayState], domain: str) -> None:
        self._state = state
        self._domain = domain

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
    ) -> Admission | Refusal:
        """The outcome the public listener would reach for this request, without traffic (no upstream, no
        plugins). `target` is the path with its query string, as on the request line; `mcp` the JSON-RPC call
        (`ctx.request.mcp`: method, name, arguments) an MCP Service decides."""
        state = self._state()
        if user not in state.principals:
            return Refusal(Refused.NO_POLICIES, f"user/{user} not found (or it failed to compile)")
        facts = RequestFacts.of(
            method, URL(target), headers, host=f"{service}.{self._domain}", scheme="https", ip=ip, body=body
        )
        caller = Caller(user, {"metadata": {"name": "policy-eval"}, "spec": {"type": session_type}})
        return admit(state, caller, facts, service, None, mcp)
