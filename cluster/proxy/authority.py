"""Decisions outside the proxied request path, from the same gateway state and engine:

- the admin API, governed like a Service: the Policies named in `[admin] policies` (default
  `cluster-admins`, made by `init`: ALLOW for group `admins`) merged with the caller's user and
  group rules;
- `wardgatectl policy eval`: what the gateway would decide for a user, a Service and a request body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cluster.errors import Forbidden, NotFound
from cluster.identity.authenticate import Identity
from cluster.policy import cel
from cluster.policy.context import build_ctx, parse_body_map
from cluster.policy.engine import Decision, EvalInput, RuleSet, compile_policy, evaluate
from cluster.proxy.pipeline import GatewayState
from cluster.resources.policy import Policy
from cluster.store.cache import ResourceCache

ADMIN_SERVICE = "wardgate-admin"


def session_doc(identity: Identity) -> dict[str, Any]:
    """`ctx.session` for an identity (ACCESS_TOKEN credentials have no Session: an empty name)."""
    if identity.session is None:
        return {"metadata": {"name": ""}, "spec": {"type": "CLIENTLESS"}}
    return {"metadata": {"name": identity.session.metadata.name}, "spec": {"type": identity.session.spec.type.value}}


class Authority:
    def __init__(
        self,
        state: Callable[[], GatewayState],
        cache: ResourceCache,
        compiler: cel.Compiler,
        admin_policies: Sequence[str],
        domain: str,
    ) -> None:
        self._state = state
        self._cache = cache
        self._compiler = compiler
        self._admin_policies = tuple(admin_policies)
        self._domain = domain

    def _admin_rules(self) -> RuleSet:
        sets = []
        for name in self._admin_policies:
            policy = self._cache.get("Policy", name)
            if isinstance(policy, Policy):
                sets.append(RuleSet(compile_policy(f"policy/{name}", policy.spec, self._compiler)))
        return RuleSet.merge(*sets)

    def authorize_admin(
        self,
        identity: Identity,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        ip: str,
    ) -> Decision:
        """ALLOW or Forbidden (whose message is the reason, for the access log)."""
        principal = self._state().principals.get(identity.user.metadata.name)
        if principal is None:
            raise Forbidden(f"user {identity.user.metadata.name!r} has no compiled policies")
        ctx = build_ctx(
            user=principal.doc,
            session=session_doc(identity),
            service={"metadata": {"name": ADMIN_SERVICE}, "spec": {"isPublic": False}},
            method=method,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in headers.items() if k.lower() != "authorization"},
            host=self._domain,
            scheme="https",
            body=b"",
            body_map={},
            ip=ip,
            time=datetime.now(UTC).isoformat(),
        )
        decision = evaluate(RuleSet.merge(self._admin_rules(), principal.rules), EvalInput(ctx))
        if not decision.allowed:
            where = f" ({decision.rule})" if decision.rule else ""
            raise Forbidden(f"admin API denied: {decision.reason.value}{where}")
        return decision

    def evaluate_request(
        self,
        *,
        service: str,
        user: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        session_type: str = "CLIENTLESS",
        ip: str = "127.0.0.1",
    ) -> tuple[Decision, str | None, tuple[str, ...]]:
        """(decision, config name, notes) the gateway would reach, without traffic (no upstream, no plugins)."""
        state = self._state()
        pipe = state.services.get(service)
        if pipe is None:
            raise NotFound(f"service/{service} not found (or it failed to compile: see the cluster log)")
        principal = state.principals.get(user)
        if principal is None:
            raise NotFound(f"user/{user} not found")
        lowered = {k.lower(): v for k, v in headers.items()}
        inp = EvalInput(
            build_ctx(
                user=principal.doc,
                session={"metadata": {"name": "policy-eval"}, "spec": {"type": session_type}},
                service=pipe.doc,
                method=method,
                path=path,
                query={},
                headers=lowered,
                host=f"{service}.{self._domain}",
                scheme="https",
                body=body,
                body_map=parse_body_map(body, lowered.get("content-type", "application/json")),
                ip=ip,
                time=datetime.now(UTC).isoformat(),
            )
        )
        route, notes = pipe.pick_route(inp)
        decision = evaluate(state.rules_for(pipe, principal), inp)
        return decision, route.name if route is not None else None, tuple(notes)
