"""Checks that need more than one resource or compiled code: run before any write, never half-way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from wardgate.cluster.plugins.registry import check_plugin as build_check
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.resources.policy import Authorization, Policy, Rule
from wardgate.cluster.resources.service import Plugin, Service, condition_expressions
from wardgate.cluster.resources.user import Group, User

ExpressionCheck = Callable[[str, str], str | None]
"""(language, source) -> None when it compiles, else the compiler's message with its position. The
language is `cel` or `rego`, told by the field path (`.match` or `.opa.inline`)."""

PluginCheck = Callable[[Plugin], str | None]
"""None when a plugin can be built (a Lua script compiles and loads), else why not, with the line."""


def _plugin_problems(resource: AnyResource, check_plugin: PluginCheck) -> list[str]:
    found: list[str] = []
    if isinstance(resource, Service):
        for config_name, config in resource.spec.all_configs():
            for i, plugin in enumerate(config.http.plugins):
                message = check_plugin(plugin)
                if message is not None:
                    found.append(f"config {config_name!r} plugins[{i}] ({plugin.name}): {message}")
    return found


def _rule_expressions(rules: list[Rule], where: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for j, rule in enumerate(rules):
        found.extend(condition_expressions(rule.condition, f"{where}rules[{j}].condition"))
    return found


def _expressions(resource: AnyResource) -> list[tuple[str, str]]:
    if isinstance(resource, Policy):
        return _rule_expressions(resource.spec.rules, "spec.")
    found = resource.spec.expressions() if isinstance(resource, Service) else []
    authorization = _authorization_of(resource)
    if authorization is not None:
        for i, inline in enumerate(authorization.inline_policies):
            found.extend(_rule_expressions(inline.spec.rules, f"spec.authorization.inlinePolicies[{i}].spec."))
    return found


def _authorization_of(resource: AnyResource) -> Authorization | None:
    if isinstance(resource, Service | User | Group):
        return resource.spec.authorization
    return None


def _dangling(resource: AnyResource, visible: Mapping[tuple[str, str], AnyResource]) -> list[str]:
    found: list[str] = []
    if isinstance(resource, Service):
        for config_name, config in resource.spec.all_configs():
            auth = config.http.auth
            for ref in auth.secret_refs() if auth is not None else []:
                if ("Secret", ref.from_secret) not in visible:
                    found.append(
                        f"config {config_name!r} uses secret {ref.from_secret!r}, which does not exist yet; "
                        "requests will fail until it is created"
                    )
    authorization = _authorization_of(resource)
    for name in authorization.policies if authorization is not None else []:
        if ("Policy", name) not in visible:
            found.append(f"policy {name!r} does not exist; it allows nothing until created")
    for group in resource.spec.groups if isinstance(resource, User) else []:
        if ("Group", group) not in visible:
            found.append(f"group {group!r} does not exist")
    return found


def admit(
    resources: Iterable[AnyResource],
    visible: Mapping[tuple[str, str], AnyResource],
    check_expression: ExpressionCheck,
    check_plugin: PluginCheck = build_check,
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for writing `resources`, given every resource that will exist afterwards
    (`visible`, keyed by kind and name). Errors block the whole write; warnings are reported."""
    errors: list[str] = []
    warnings: list[str] = []
    for resource in resources:
        label = f"{resource.kind.lower()}/{resource.metadata.name}"
        for path, source in _expressions(resource):
            message = check_expression("rego" if path.endswith(".opa.inline") else "cel", source)
            if message is not None:
                errors.append(f"{label}: {path}: {message}")
        errors.extend(f"{label}: {text}" for text in _plugin_problems(resource, check_plugin))
        warnings.extend(f"{label}: {text}" for text in _dangling(resource, visible))
    return errors, warnings
