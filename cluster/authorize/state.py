"""Gateway state: everything an admission decision needs, compiled from the resource cache and swapped whole.

Built off the request path when a kind it depends on changes (holder.py): per Service its configs, the
dynamic-config rules and the authorization RuleSet; per User (with its Groups) the RuleSets that govern
Services and the ones that govern the admin API, and the JSON docs policies see; the admin policies.
CEL programs come from one Compiler (cached by source hash), so a rebuild recompiles nothing unchanged;
each config's plugin chain comes from one PluginBuilder, which reuses plugins whose spec is unchanged
(Lua scripts compile here, in runtime pools; never per request).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from wardgate.cluster.authorize.resilience import Endpoint, RetryPolicy, endpoints, fallback_order, retry_policy
from wardgate.cluster.plugins.manager import PluginChain
from wardgate.cluster.plugins.registry import PluginBuilder
from wardgate.cluster.policy import cel, projection
from wardgate.cluster.policy.context import resource_doc
from wardgate.cluster.policy.engine import (
    CompiledCondition,
    ConditionError,
    EvalInput,
    RuleSet,
    compile_authorization,
    compile_conditions,
    compile_policy,
    condition_reads_body,
    condition_uses_rego,
)
from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.resources.policy import Policy, Scope
from wardgate.cluster.resources.pricing import Pricing
from wardgate.cluster.resources.quota import Quota
from wardgate.cluster.resources.service import Service, ServiceConfig
from wardgate.cluster.resources.user import Group, User
from wardgate.cluster.usage.rules import UsageRules, compile_usage

log = logging.getLogger(__name__)

MAX_MERGED = 100_000
ADMIN_SERVICE = "wardgate-admin"
"""`ctx.service.metadata.name` on the admin API."""
STATE_KINDS = frozenset({"Service", "Policy", "User", "Group", "Secret", "Quota", "Pricing"})
"""The kinds a GatewayState is compiled from: a change to any other kind (Session, Credential, lease...)
needs no rebuild."""


@dataclass(frozen=True, slots=True)
class Route:
    """One config of a Service, ready to forward: the upstream split once, the header rules lower-cased."""

    name: str
    config: ServiceConfig
    scheme: str
    netloc: str
    base_path: str
    add_request_headers: tuple[tuple[str, str], ...]
    remove_request_headers: frozenset[str]
    add_response_headers: tuple[tuple[str, str], ...]
    remove_response_headers: frozenset[str]
    plugins: PluginChain = field(default_factory=PluginChain)
    endpoints: tuple[Endpoint, ...] = ()
    """Every replica; `scheme`, `netloc` and `base_path` are the first one's."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    fallbacks: tuple[tuple[Route, str | None], ...] = ()
    """The configs tried after this one, in order, with the `model` each is sent (None: unchanged)."""


def make_route(name: str, config: ServiceConfig, plugins: PluginChain | None = None) -> Route:
    replicas = endpoints(config)
    header = config.http.header
    return Route(
        name=name,
        config=config,
        scheme=replicas[0].scheme,
        netloc=replicas[0].netloc,
        base_path=replicas[0].base_path,
        add_request_headers=tuple((h.name, h.value) for h in header.add_request_headers),
        remove_request_headers=frozenset(h.lower() for h in header.remove_request_headers),
        add_response_headers=tuple((h.name, h.value) for h in header.add_response_headers),
        remove_response_headers=frozenset(h.lower() for h in header.remove_response_headers),
        plugins=plugins if plugins is not None else PluginChain(),
        endpoints=replicas,
        retry=retry_policy(config),
    )


@dataclass(frozen=True, slots=True)
class ServicePipeline:
    """A Service compiled for the request path."""

    name: str
    service: Service
    doc: dict[str, Any]
    default: Route | None
    routes: dict[str, Route]
    dynamic_rules: tuple[tuple[CompiledCondition, str], ...]
    rules: RuleSet
    dynamic_reads_body: bool = False
    dynamic_rego: bool = False
    max_request_bytes: int = 0
    """The largest body any of its configs accepts (the read limit before a config is picked)."""
    parse_limit: int = 0
    """The largest body any of its configs parses into `bodyMap`."""
    max_values: int = 0
    """The most JSON values any of its configs parses into `bodyMap`."""

    def pick_route(self, inp: EvalInput) -> tuple[Route | None, list[str]]:
        """The config the first matching dynamic rule names, else `spec.config`; a rule whose condition
        cannot be evaluated (e.g. a non-JSON body) is skipped, with a note for the access log."""
        notes: list[str] = []
        for condition, name in self.dynamic_rules:
            try:
                if condition(inp):
                    return (self.routes[name] if name != "default" else self.default), notes
            except ConditionError as exc:
                notes.append(f"dynamic rule for {name!r} not applied: {exc}")
        return self.default, notes


@dataclass(frozen=True, slots=True)
class Principal:
    """A User as policies see it, with the rules of the user and all of its groups merged: `rules` govern
    Services (scope SERVICES or ALL), `admin_rules` the admin API (scope ADMIN or ALL)."""

    user: User
    doc: dict[str, Any]
    rules: RuleSet
    admin_rules: RuleSet


@dataclass(frozen=True, slots=True)
class GatewayState:
    services: dict[str, ServicePipeline] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    admin: RuleSet = field(default_factory=RuleSet)
    """The rules of the Policies named in `[admin] policies`, all of them whatever their scope."""
    usage: UsageRules = field(default_factory=UsageRules)
    """The Quotas and prices (cluster/usage/rules.py)."""
    _merged: dict[tuple[str, str], RuleSet] = field(default_factory=dict)

    def needs_rego(self, pipe: ServicePipeline, user: str) -> bool:
        """Whether deciding a request of `user` to `pipe` may run Rego (then it runs off the event loop)."""
        principal = self.principals.get(user)
        return pipe.dynamic_rego or (principal is not None and self.rules_for(pipe, principal).uses_rego)

    def rules_for(self, pipe: ServicePipeline, principal: Principal) -> RuleSet:
        """The Service's rules merged with the user's and groups', merged once per pair while this state
        lives (a changed resource builds a new state)."""
        key = (pipe.name, principal.user.metadata.name)
        rules = self._merged.get(key)
        if rules is None:
            if len(self._merged) >= MAX_MERGED:
                self._merged.clear()
            rules = self._merged[key] = RuleSet.merge(pipe.rules, principal.rules)
        return rules


def _compile_service(
    service: Service, named: Mapping[str, RuleSet], compiler: cel.Compiler, plugins: PluginBuilder
) -> ServicePipeline:
    spec = service.spec
    routes = {
        name: make_route(name, cfg, plugins.chain(cfg.http.plugins, compiler)) for name, cfg in spec.all_configs()
    }
    edges = {name: route.config.fallbacks for name, route in routes.items()}
    routes = {
        name: replace(route, fallbacks=tuple((routes[n], m) for n, m in fallback_order(name, edges)))
        if route.config.fallbacks
        else route
        for name, route in routes.items()
    }
    rules = compile_authorization("service", service.metadata.name, spec.authorization, named, compiler)
    dynamic: list[tuple[CompiledCondition, str]] = []
    if spec.dynamic_config is not None:
        picks = spec.dynamic_config.rules
        # The dynamic rules run first on every request and the Service's policies right after: one conversion
        # of ctx for both (the policies' paths ride along; cel.Activation finds them covered).
        reads = projection.union(rule.cel_reads for rule in rules)
        conditions = compile_conditions([r.condition for r in picks], compiler, also=[reads])
        dynamic = [(condition, r.config_name) for condition, r in zip(conditions, picks, strict=True)]
    dynamic_reads_body = spec.dynamic_config is not None and any(
        condition_reads_body(r.condition) for r in spec.dynamic_config.rules
    )
    dynamic_rego = spec.dynamic_config is not None and any(
        condition_uses_rego(r.condition) for r in spec.dynamic_config.rules
    )
    return ServicePipeline(
        name=service.metadata.name,
        service=service,
        doc={"metadata": {"name": service.metadata.name}, "spec": {"isPublic": spec.is_public}},
        default=routes.get("default"),
        routes=routes,
        dynamic_rules=tuple(dynamic),
        rules=rules.scoped(Scope.SERVICES),
        dynamic_reads_body=dynamic_reads_body,
        dynamic_rego=dynamic_rego,
        max_request_bytes=max((r.config.http.body.max_request_bytes for r in routes.values()), default=0),
        parse_limit=max((r.config.http.body.max_parsed_bytes for r in routes.values()), default=0),
        max_values=max((r.config.http.body.max_parsed_values for r in routes.values()), default=0),
    )


class Resources(Protocol):
    """What a build reads: the cache itself, or a snapshot of it (holder.py)."""

    def list_kind(self, kind: str) -> list[AnyResource]: ...


def build_state(
    cache: Resources,
    compiler: cel.Compiler,
    plugins: PluginBuilder | None = None,
    admin_policies: Sequence[str] = (),
) -> GatewayState:
    """Compile everything; a resource that fails to compile is left out (and reported), never half-built.

    Pass the same `plugins` builder on every rebuild: it keeps plugin instances (Lua runtime pools,
    gRPC channels) whose spec did not change. Without one, plugins are built afresh.
    """
    plugins = plugins if plugins is not None else PluginBuilder()
    errors: dict[str, str] = {}
    named: dict[str, RuleSet] = {}
    for policy in cache.list_kind("Policy"):
        assert isinstance(policy, Policy)
        try:
            named[policy.metadata.name] = RuleSet(
                compile_policy(f"policy/{policy.metadata.name}", policy.spec, compiler)
            )
        except Exception as exc:
            errors[f"policy/{policy.metadata.name}"] = str(exc)
    groups: dict[str, RuleSet] = {}
    for group in cache.list_kind("Group"):
        assert isinstance(group, Group)
        try:
            groups[group.metadata.name] = compile_authorization(
                "group", group.metadata.name, group.spec.authorization, named, compiler
            )
        except Exception as exc:
            errors[f"group/{group.metadata.name}"] = str(exc)
    principals: dict[str, Principal] = {}
    for user in cache.list_kind("User"):
        assert isinstance(user, User)
        try:
            own = compile_authorization("user", user.metadata.name, user.spec.authorization, named, compiler)
        except Exception as exc:
            errors[f"user/{user.metadata.name}"] = str(exc)
            continue
        merged = RuleSet.merge(own, *(groups[g] for g in user.spec.groups if g in groups))
        principals[user.metadata.name] = Principal(
            user, resource_doc(user), merged.scoped(Scope.SERVICES), merged.scoped(Scope.ADMIN)
        )
    services: dict[str, ServicePipeline] = {}
    for service in cache.list_kind("Service"):
        assert isinstance(service, Service)
        try:
            services[service.metadata.name] = _compile_service(service, named, compiler, plugins)
        except Exception as exc:
            errors[f"service/{service.metadata.name}"] = str(exc)
    secrets = {}
    for secret in cache.list_kind("Secret"):
        assert isinstance(secret, Secret)
        secrets[secret.metadata.name] = secret.spec.reveal()
    plugins.prune()
    for where, message in errors.items():
        log.error("%s left out of the gateway: %s", where, message)
    admin = RuleSet.merge(*(named[name] for name in dict.fromkeys(admin_policies) if name in named))
    quotas = [q for q in cache.list_kind("Quota") if isinstance(q, Quota)]
    usage = compile_usage(quotas, [p for p in cache.list_kind("Pricing") if isinstance(p, Pricing)])
    return GatewayState(services, principals, secrets, errors, admin, usage)
