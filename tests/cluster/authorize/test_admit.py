"""admit, as a table: compiled state + caller + request facts -> Admission or Refusal. No sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from yarl import URL

from wardgate.cluster.authorize.admit import Admission, Caller, Refusal, admit
from wardgate.cluster.authorize.facts import RequestFacts
from wardgate.cluster.authorize.state import ADMIN_SERVICE, GatewayState, build_state
from wardgate.cluster.errors import Refused
from wardgate.cluster.policy import cel
from wardgate.cluster.resources.kinds import AnyResource, from_document

ANY_SESSION = {"metadata": {"name": "s1"}, "spec": {"type": "CLIENTLESS"}}


class Resources:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self._items: dict[str, list[AnyResource]] = {}
        for doc in docs:
            resource = from_document(doc)
            self._items.setdefault(resource.kind, []).append(resource)

    def list_kind(self, kind: str) -> list[AnyResource]:
        return self._items.get(kind, [])


def rule(effect: str, condition: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"effect": effect, "condition": condition, **extra}


def inline(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"inlinePolicies": [{"spec": {"rules": list(rules)}}]}


def service(name: str = "llm", rules: tuple[dict[str, Any], ...] = (), **spec: Any) -> dict[str, Any]:
    body = {"isPublic": True, "config": {"upstream": {"url": "http://127.0.0.1:9"}}, **spec}
    if rules:
        body["authorization"] = inline(*rules)
    return {"kind": "Service", "metadata": {"name": name}, "spec": body}


def user(name: str = "alice", groups: tuple[str, ...] = (), rules: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "HUMAN", "groups": list(groups)}
    if rules:
        spec["authorization"] = inline(*rules)
    return {"kind": "User", "metadata": {"name": name}, "spec": spec}


def group(name: str, rules: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {"kind": "Group", "metadata": {"name": name}, "spec": {"authorization": inline(*rules)}}


def policy(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Policy", "metadata": {"name": name}, "spec": {"rules": list(rules)}}


def state_of(*docs: dict[str, Any], admin_policies: tuple[str, ...] = ()) -> GatewayState:
    state = build_state(Resources(list(docs)), cel.Compiler(), admin_policies=admin_policies)
    assert not state.errors, state.errors
    return state


def facts(target: str = "/v1/chat/completions", *, body: Any = None, headers: dict[str, str] | None = None,
          method: str = "POST", host: str = "llm.wardgate.test") -> RequestFacts:  # fmt: skip
    raw = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    return RequestFacts.of(
        method,
        URL(target),
        {"Content-Type": "application/json", **(headers or {})},
        host=host,
        scheme="https",
        ip="127.0.0.1",
        body=raw,
    )


def run(state: GatewayState, f: RequestFacts, target: str = "llm", who: str = "alice") -> Admission | Refusal:
    return admit(state, Caller(who, ANY_SESSION), f, target)


ALLOW_ALL = rule("ALLOW", {"matchAny": True})


def test_a_service_rule_allows_and_names_itself() -> None:
    outcome = run(state_of(service(rules=(rule("ALLOW", {"matchAny": True}, name="everyone"),)), user()), facts())
    assert isinstance(outcome, Admission)
    assert outcome.decision.rule is not None and outcome.decision.rule.rule == "everyone"
    assert outcome.route is not None and outcome.route.name == "default"


@pytest.mark.parametrize(
    ("docs", "target", "who", "refused", "reason"),
    [
        ((service(), user()), "llm", "alice", Refused.FORBIDDEN, "no-rule-matched"),
        ((service(rules=(ALLOW_ALL,)), user()), "nope", "alice", Refused.UNKNOWN_SERVICE, "service/nope"),
        ((service(rules=(ALLOW_ALL,)), user()), "llm", "mallory", Refused.NO_POLICIES, "user 'mallory'"),
        (
            (service(rules=(ALLOW_ALL, rule("DENY", {"match": "ctx.user.metadata.name == 'alice'"}))), user()),
            "llm",
            "alice",
            Refused.FORBIDDEN,
            "rule-match",
        ),
    ],
)
def test_refusals(docs: tuple[dict[str, Any], ...], target: str, who: str, refused: Refused, reason: str) -> None:
    outcome = run(state_of(*docs), facts(), target, who)
    assert isinstance(outcome, Refusal)
    assert outcome.refused is refused
    assert reason in outcome.reason


# --- the admin API is governed only by rules that name it ----------------------------------------------------


def test_a_catch_all_group_rule_for_services_does_not_open_the_admin_api() -> None:
    state = state_of(
        service(),
        group("team", (ALLOW_ALL,)),
        user(groups=("team",)),
        policy("cluster-admins", rule("ALLOW", {"match": "'admins' in ctx.user.spec.groups"})),
        admin_policies=("cluster-admins",),
    )
    assert isinstance(run(state, facts()), Admission)  # the team may use every Service...
    admin = run(state, facts("/api/v1/secrets", method="GET"), ADMIN_SERVICE)
    assert isinstance(admin, Refusal) and admin.refused is Refused.FORBIDDEN  # ...but not administer
    assert "no-rule-matched" in admin.reason


@pytest.mark.parametrize("scope", ["ADMIN", "ALL"])
def test_a_rule_scoped_to_admin_reaches_the_admin_api(scope: str) -> None:
    agent_only = rule("ALLOW", {"match": "ctx.request.http.path.startsWith('/agent/v1/')"}, scope=scope)
    state = state_of(service(), user(rules=(agent_only,)))
    assert isinstance(run(state, facts("/agent/v1/peers", method="GET"), ADMIN_SERVICE), Admission)
    assert isinstance(run(state, facts("/api/v1/secrets", method="GET"), ADMIN_SERVICE), Refusal)
    on_service = run(state, facts("/agent/v1/peers"))
    assert isinstance(on_service, Admission) == (scope == "ALL")


def test_admin_policies_apply_to_the_admin_api_only() -> None:
    state = state_of(
        service(),
        user(groups=("admins",)),
        policy("cluster-admins", rule("ALLOW", {"match": "'admins' in ctx.user.spec.groups"})),
        admin_policies=("cluster-admins",),
    )
    assert isinstance(run(state, facts("/api/v1/users", method="GET"), ADMIN_SERVICE), Admission)
    assert isinstance(run(state, facts()), Refusal)


def test_a_deny_scoped_all_vetoes_admin_and_services() -> None:
    state = state_of(
        service(rules=(ALLOW_ALL,)),
        user(groups=("admins",), rules=(rule("DENY", {"matchAny": True}, scope="ALL"),)),
        policy("cluster-admins", rule("ALLOW", {"match": "'admins' in ctx.user.spec.groups"})),
        admin_policies=("cluster-admins",),
    )
    assert isinstance(run(state, facts("/api/v1/users", method="GET"), ADMIN_SERVICE), Refusal)
    assert isinstance(run(state, facts()), Refusal)


# --- what rules see ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "request_facts", "allowed"),
    [
        ("ctx.request.http.query['stream'] == 'true'", facts("/v1/x?stream=true"), True),
        ("ctx.request.http.query['stream'] == 'true'", facts("/v1/x?stream=false"), False),
        ("ctx.request.http.headers['x-team'] == 'ml'", facts(headers={"X-Team": "ml"}), True),
        ("'authorization' in ctx.request.http.headers", facts(headers={"Authorization": "Bearer t"}), False),
        ("'proxy-authorization' in ctx.request.http.headers", facts(headers={"Proxy-Authorization": "x"}), False),
        (
            "ctx.request.http.headers['cookie'] == 'theme=dark'",
            facts(headers={"Cookie": "wardgate_session=secret-token; theme=dark"}),
            True,
        ),
        ("!('cookie' in ctx.request.http.headers)", facts(headers={"Cookie": " wardgate_session =tok"}), True),
        ("ctx.request.http.bodyMap.model == 'gpt-4o'", facts(body={"model": "gpt-4o"}), True),
        ("ctx.request.http.bodyMap == {}", facts(body=b"not json"), True),
        ("ctx.request.http.path == '/v1/models'", facts("/v1/models?x=1"), True),
        ("ctx.request.http.method == 'POST'", facts(method="post"), True),
    ],
)
def test_what_a_rule_sees(condition: str, request_facts: RequestFacts, allowed: bool) -> None:
    state = state_of(service(rules=(rule("ALLOW", {"match": condition}),)), user())
    assert isinstance(run(state, request_facts), Admission) is allowed


# --- bodies ----------------------------------------------------------------------------------------------------

BIG = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 4096}] * 8}  # ~33 KB


def limited(**spec: Any) -> dict[str, Any]:
    doc = service(**spec)
    doc["spec"]["config"]["http"] = {"body": {"maxParsedBytes": 1024, "maxRequestBytes": 64 * 1024}}
    return doc


def test_a_body_over_the_parse_limit_passes_unparsed_where_nothing_reads_it() -> None:
    outcome = run(state_of(limited(rules=(ALLOW_ALL,)), user()), facts(body=BIG))
    assert isinstance(outcome, Admission)
    assert outcome.body_map == {}


@pytest.mark.parametrize(
    "condition",
    ["ctx.request.http.bodyMap.model == 'gpt-4o'", "size(ctx.request.http.body) > 0"],
)
def test_a_body_over_the_parse_limit_is_refused_where_a_rule_reads_it(condition: str) -> None:
    state = state_of(limited(rules=(rule("ALLOW", {"match": condition}),)), user())
    outcome = run(state, facts(body=BIG))
    assert isinstance(outcome, Refusal) and outcome.refused is Refused.TOO_LARGE_TO_INSPECT
    assert isinstance(run(state, facts(body={"model": "gpt-4o"})), Admission)


def test_a_body_over_the_parse_limit_is_refused_where_a_rego_rule_reads_it() -> None:
    rego = 'package p\ndefault allow := false\nallow if input.ctx.request.http.bodyMap.model == "gpt-4o"'
    state = state_of(limited(rules=(rule("ALLOW", {"opa": {"inline": rego}}),)), user())
    outcome = run(state, facts(body=BIG))
    assert isinstance(outcome, Refusal) and outcome.refused is Refused.TOO_LARGE_TO_INSPECT


def test_a_body_over_the_parse_limit_is_refused_where_a_dynamic_rule_reads_it() -> None:
    doc = limited(rules=(ALLOW_ALL,))
    doc["spec"]["dynamicConfig"] = {
        "configs": [
            {
                "name": "mini",
                "upstream": {"url": "http://127.0.0.1:8"},
                "http": {"body": {"maxParsedBytes": 1024, "maxRequestBytes": 64 * 1024}},
            }
        ],
        "rules": [{"condition": {"match": "ctx.request.http.bodyMap.model == 'mini'"}, "configName": "mini"}],
    }
    state = state_of(doc, user())
    refused = run(state, facts(body=BIG))
    assert isinstance(refused, Refusal) and refused.refused is Refused.TOO_LARGE_TO_INSPECT
    picked = run(state, facts(body={"model": "mini"}))
    assert isinstance(picked, Admission) and picked.route is not None and picked.route.name == "mini"


def test_a_body_over_the_request_limit_is_refused_whatever_reads_it() -> None:
    state = state_of(limited(rules=(ALLOW_ALL,)), user())
    outcome = run(state, facts(body=b"x" * (64 * 1024 + 1)))
    assert isinstance(outcome, Refusal) and outcome.refused is Refused.TOO_LARGE


def test_a_deep_body_is_not_parsed() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    state = state_of(service(rules=(rule("ALLOW", {"match": "ctx.request.http.bodyMap == {}"}),)), user())
    assert isinstance(run(state, facts(body=b'{"a":' + deep + b"}")), Admission)


def test_a_body_with_more_values_than_parsed_is_refused_where_read_and_passed_where_not() -> None:
    many = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}] * 5000}  # ~15,000 values, 150 KB
    reads = state_of(service(rules=(rule("ALLOW", {"match": "has(ctx.request.http.bodyMap.model)"}),)), user())
    refused = run(reads, facts(body=many))
    assert isinstance(refused, Refusal) and refused.refused is Refused.TOO_LARGE_TO_INSPECT
    assert isinstance(run(reads, facts(body={"model": "gpt-4o", "messages": many["messages"][:100]})), Admission)
    passes = run(state_of(service(rules=(ALLOW_ALL,)), user()), facts(body=many))
    assert isinstance(passes, Admission) and passes.body_map == {}


def test_a_services_dynamic_rules_and_policies_convert_ctx_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dynamic-config rules run first and convert what the Service's policies read too."""
    made: list[object] = []

    class Counted(cel._Conversion):
        def __init__(self, paths: Any, key: object, variables: Any) -> None:
            made.append(variables)
            super().__init__(paths, key, variables)

    monkeypatch.setattr(cel, "_Conversion", Counted)
    policy_rule = rule(
        "ALLOW",
        {"all": {"of": [{"match": 'ctx.user.spec.groups.hasAll("dev")'}, {"match": "ctx.request.http.bodyMap.n < 4"}]}},
    )
    doc = service(rules=(policy_rule,))
    doc["spec"]["dynamicConfig"] = {
        "configs": [{"name": "mini", "upstream": {"url": "http://127.0.0.1:8"}}],
        "rules": [{"condition": {"match": "ctx.request.http.bodyMap.model == 'mini'"}, "configName": "mini"}],
    }
    state = state_of(doc, user(groups=("dev",)), {"kind": "Group", "metadata": {"name": "dev"}, "spec": {}})
    for body, route, allowed in [
        ({"model": "mini", "n": 1}, "mini", True),
        ({"model": "other", "n": 1}, "default", True),
        ({"model": "mini", "n": 9}, "mini", False),
    ]:
        made.clear()
        outcome = run(state, facts(body=body))
        assert isinstance(outcome, Admission) is allowed, outcome
        if isinstance(outcome, Admission):
            assert outcome.route is not None and outcome.route.name == route
        assert len(made) == 1, made
