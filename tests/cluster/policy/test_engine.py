"""cluster.policy.engine: precedence, every condition form, errors deny, merging, and the seed my-api policy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from wardgate.cluster.policy import cel, projection
from wardgate.cluster.policy.engine import (
    CompiledRule,
    ConditionError,
    Decision,
    EvalInput,
    RuleRef,
    RuleSet,
    compile_authorization,
    compile_condition,
    compile_policy,
    evaluate,
)
from wardgate.cluster.policy.reasons import Reason
from wardgate.cluster.policy.rego import RegoCompileError
from wardgate.cluster.resources.policy import Authorization, Condition, Effect, PolicySpec

ALLOW, DENY = Effect.ALLOW, Effect.DENY
MATCH, NO_MATCH, ERROR = Reason.RULE_MATCH, Reason.NO_MATCH, Reason.CONDITION_ERROR


def make_ctx(**changes: Any) -> dict[str, Any]:
    """A policy ctx (DESIGN.md); ``changes`` maps a path under ctx, ``__``-separated, to a value (DELETE drops it)."""
    ctx: dict[str, Any] = {
        "user": {
            "metadata": {"name": "alice"},
            "spec": {"type": "HUMAN", "groups": ["dev", "ops"], "email": "alice@example.com"},
        },
        "session": {"metadata": {"name": "s-1"}, "spec": {"type": "CLIENT"}},
        "service": {"metadata": {"name": "my-api"}, "spec": {"isPublic": False}},
        "request": {
            "http": {
                "method": "POST",
                "path": "/v1/chat/completions",
                "query": {},
                "headers": {"content-type": "application/json"},
                "host": "my-api.example.com",
                "scheme": "https",
                "bodyMap": {
                    "model": "gpt-4o-mini",
                    "temperature": 0.5,
                    "messages": [{"role": "user", "content": "hi"}] * 3,
                },
                "body": b'{"model": "gpt-4o-mini"}',
            },
            "ip": "100.64.0.2",
        },
        "time": "2026-11-27T12:00:00Z",
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = ctx
        for name in parents:
            node = node[name]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return ctx


DELETE = object()
BODY = "request__http__bodyMap"


@pytest.fixture(scope="module")
def compiler() -> cel.Compiler:
    return cel.Compiler()


def policy(text: str) -> PolicySpec:
    return PolicySpec.model_validate(yaml.safe_load(text))


def rules(text: str, compiler: cel.Compiler, ref: str = "policy/test") -> RuleSet:
    return RuleSet(compile_policy(ref, policy(text), compiler))


def decide(text: str, compiler: cel.Compiler, **changes: Any) -> Decision:
    return evaluate(rules(text, compiler), EvalInput(make_ctx(**changes)))


def ref(rule: str, policy_ref: str = "policy/test") -> RuleRef:
    return RuleRef(policy_ref, rule)


# Conditions that are true, false, or fail on the default ctx, in CEL and in Rego.
T = 'match: ctx.request.http.method == "POST"'
F = 'match: ctx.request.http.method == "GET"'
E = "match: ctx.request.http.bodyMap.nope == 1"
OT = 'opa: {inline: "package t\\nallow if input.ctx.request.http.method == \\"POST\\""}'
OF = 'opa: {inline: "package t\\nallow if input.ctx.request.http.method == \\"GET\\""}'
OE = 'opa: {inline: "package t\\nallow if 1 / count(input.ctx.request.http.query) > 0"}'


# --- precedence ---------------------------------------------------------------------------------------

PRECEDENCE = [
    (
        "lower priority number runs first",
        f"""
        rules:
          - {{effect: DENY, priority: 0, condition: {{{T}}}}}
          - {{effect: ALLOW, priority: -1, condition: {{{T}}}}}
        """,
        ALLOW,
        MATCH,
        ref("rules[1]"),
    ),
    (
        "priority is numeric, not textual",
        f"""
        rules:
          - {{effect: ALLOW, priority: 10, condition: {{{T}}}}}
          - {{effect: DENY, priority: 9, condition: {{{T}}}}}
          - {{effect: ALLOW, priority: -1000, condition: {{{F}}}}}
          - {{effect: ALLOW, priority: 1000, condition: {{{T}}}}}
        """,
        DENY,
        MATCH,
        ref("rules[1]"),
    ),
    (
        "DENY wins a tie though declared last",
        f"""
        rules:
          - {{effect: ALLOW, condition: {{{T}}}}}
          - {{effect: DENY, condition: {{{T}}}}}
        """,
        DENY,
        MATCH,
        ref("rules[1]"),
    ),
    (
        "a DENY that does not match lets the ALLOW decide",
        f"""
        rules:
          - {{effect: ALLOW, condition: {{{T}}}}}
          - {{effect: DENY, condition: {{{F}}}}}
        """,
        ALLOW,
        MATCH,
        ref("rules[0]"),
    ),
    (
        "first match wins",
        f"""
        rules:
          - {{effect: ALLOW, condition: {{{F}}}}}
          - {{name: second, effect: ALLOW, condition: {{{T}}}}}
          - {{name: third, effect: ALLOW, condition: {{{T}}}}}
        """,
        ALLOW,
        MATCH,
        ref("second"),
    ),
    (
        "declaration order within a tie",
        f"""
        rules:
          - {{name: first-deny, effect: DENY, priority: 3, condition: {{{T}}}}}
          - {{name: second-deny, effect: DENY, priority: 3, condition: {{{T}}}}}
        """,
        DENY,
        MATCH,
        ref("first-deny"),
    ),
    (
        "a later error is never reached",
        f"""
        rules:
          - {{effect: ALLOW, priority: -5, condition: {{{T}}}}}
          - {{effect: DENY, priority: 5, condition: {{{E}}}}}
        """,
        ALLOW,
        MATCH,
        ref("rules[0]"),
    ),
    (
        "an earlier error denies before a match",
        f"""
        rules:
          - {{effect: ALLOW, condition: {{{E}}}}}
          - {{effect: ALLOW, priority: 1, condition: {{{T}}}}}
        """,
        DENY,
        ERROR,
        ref("rules[0]"),
    ),
    (
        "no rule matches",
        f"""
        rules:
          - {{effect: ALLOW, condition: {{{F}}}}}
          - {{effect: DENY, condition: {{{F}}}}}
        """,
        DENY,
        NO_MATCH,
        None,
    ),
    ("no rules at all", "rules: []", DENY, NO_MATCH, None),
]


@pytest.mark.parametrize(
    ("text", "effect", "reason", "rule"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_precedence(compiler: cel.Compiler, text: str, effect: Effect, reason: Reason, rule: RuleRef | None) -> None:
    decision = decide(text, compiler)
    assert (decision.effect, decision.reason, decision.rule) == (effect, reason, rule)
    assert decision.allowed is (effect is ALLOW)


# --- every condition form -------------------------------------------------------------------------------

CONDITIONS = [
    ("match true", T, MATCH),
    ("match false", F, NO_MATCH),
    ("match error", E, ERROR),
    ("matchAny", "matchAny: true", MATCH),
    ("all true", f"all: {{of: [{{{T}}}, {{{T}}}, {{{OT}}}]}}", MATCH),
    ("all with one false", f"all: {{of: [{{{T}}}, {{{F}}}, {{{T}}}]}}", NO_MATCH),
    ("all stops at the first false", f"all: {{of: [{{{F}}}, {{{E}}}]}}", NO_MATCH),
    ("all: an error before a false", f"all: {{of: [{{{E}}}, {{{F}}}]}}", ERROR),
    ("any with one true", f"any: {{of: [{{{F}}}, {{{T}}}]}}", MATCH),
    ("any all false", f"any: {{of: [{{{F}}}, {{{OF}}}]}}", NO_MATCH),
    ("any stops at the first true", f"any: {{of: [{{{T}}}, {{{E}}}]}}", MATCH),
    ("any: an error before a true", f"any: {{of: [{{{F}}}, {{{E}}}, {{{T}}}]}}", ERROR),
    ("not false", f"not: {{{F}}}", MATCH),
    ("not true", f"not: {{{T}}}", NO_MATCH),
    ("not error is an error, not true", f"not: {{{E}}}", ERROR),
    ("not not", f"not: {{not: {{{T}}}}}", MATCH),
    ("opa true", OT, MATCH),
    ("opa false", OF, NO_MATCH),
    ("opa runtime error", OE, ERROR),
    ("not opa error", f"not: {{{OE}}}", ERROR),
    (
        "nested mix",
        f"all: {{of: [{{any: {{of: [{{{F}}}, {{{OT}}}]}}}}, {{not: {{{OF}}}}}, {{matchAny: true}}]}}",
        MATCH,
    ),
    (
        "nested error deep inside",
        f"any: {{of: [{{{F}}}, {{all: {{of: [{{{T}}}, {{not: {{{E}}}}}]}}}}]}}",
        ERROR,
    ),
]


@pytest.mark.parametrize(("condition", "reason"), [c[1:] for c in CONDITIONS], ids=[c[0] for c in CONDITIONS])
def test_condition_forms(compiler: cel.Compiler, condition: str, reason: Reason) -> None:
    decision = decide(f"rules: [{{effect: ALLOW, condition: {{{condition}}}}}]", compiler)
    assert decision.reason == reason
    assert decision.effect == (ALLOW if reason == MATCH else DENY)
    assert decision.rule == (None if reason == NO_MATCH else ref("rules[0]"))


def test_a_compiled_condition_raises_condition_error(compiler: cel.Compiler) -> None:
    condition = compile_condition(Condition.model_validate(yaml.safe_load(E)), compiler)
    with pytest.raises(ConditionError, match=r"CEL: .*nope"):
        condition(EvalInput(make_ctx()))


def test_compile_errors_surface_at_build_time(compiler: cel.Compiler) -> None:
    with pytest.raises(cel.CelCompileError):
        rules("rules: [{effect: ALLOW, condition: {match: 'ctx.a =='}}]", compiler)
    with pytest.raises(RegoCompileError):
        rules('rules: [{effect: ALLOW, condition: {opa: {inline: "package t\\nallow if {"}}}]', compiler)


# --- errors deny, with the rule's ref ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "changes", "detail"),
    [
        ("match: ctx.request.http.bodyMap.temperature < 0.7", {f"{BODY}__temperature": DELETE}, "temperature"),
        ("match: \"ctx.request.http.headers['x-team'] == 'a'\"", {}, "x-team"),
        ("match: ctx.request.http.bodyMap.model < 3", {}, "CEL"),
        (OE, {}, "divide by zero"),
        ('opa: {inline: "package t\\nallow if to_number(input.ctx.request.http.method) > 1"}', {}, "Rego (t)"),
    ],
)
def test_condition_errors_deny_with_the_rule_ref(
    compiler: cel.Compiler, condition: str, changes: dict[str, Any], detail: str
) -> None:
    text = f"""
    rules:
      - {{name: guarded, effect: DENY, priority: -1, condition: {{{F}}}}}
      - {{name: breaks, effect: ALLOW, condition: {{{condition}}}}}
      - {{name: fallback, effect: ALLOW, priority: 1, condition: {{matchAny: true}}}}
    """
    decision = decide(text, compiler, **changes)
    assert (decision.effect, decision.reason, decision.rule) == (DENY, ERROR, ref("breaks"))
    assert decision.detail is not None and detail in decision.detail


def test_an_erroring_deny_rule_still_denies(compiler: cel.Compiler) -> None:
    decision = decide(
        f"rules: [{{effect: DENY, condition: {{{E}}}}}, {{effect: ALLOW, priority: 1, condition: {{{T}}}}}]", compiler
    )
    assert (decision.effect, decision.reason) == (DENY, ERROR)


def test_a_ctx_cel_cannot_hold_is_a_condition_error(compiler: cel.Compiler) -> None:
    bad = make_ctx(time={1.5: "x"})
    reads_time = "match: ctx.time != ''"
    decision = evaluate(rules(f"rules: [{{effect: ALLOW, condition: {{{reads_time}}}}}]", compiler), EvalInput(bad))
    assert (decision.reason, decision.rule) == (ERROR, ref("rules[0]"))
    # A condition is handed only the ctx parts it names: one that never reads ctx.time is unaffected.
    decision = evaluate(rules(f"rules: [{{effect: ALLOW, condition: {{{T}}}}}]", compiler), EvalInput(bad))
    assert (decision.reason, decision.rule) == (Reason.RULE_MATCH, ref("rules[0]"))


# --- merging service, user and group sets -----------------------------------------------------------------


def authorization(text: str) -> Authorization:
    return Authorization.model_validate(yaml.safe_load(text))


def inline(*rule_lines: str) -> str:
    body = "\n".join(f"          - {line}" for line in rule_lines)
    return f"""
    inlinePolicies:
      - spec:
          rules:
{body}
    """


def request_rules(
    compiler: cel.Compiler,
    service: str,
    user: str = "{}",
    groups: tuple[str, ...] = (),
    named: dict[str, RuleSet] | None = None,
) -> RuleSet:
    named = named or {}
    sets = [
        compile_authorization("service", "my-api", authorization(service), named, compiler),
        compile_authorization("user", "alice", authorization(user), named, compiler),
        *(
            compile_authorization("group", f"g{i}", authorization(g), named, compiler)
            for i, g in enumerate(groups, start=1)
        ),
    ]
    return RuleSet.merge(*sets)


def test_a_group_deny_at_the_same_priority_beats_a_service_allow(compiler: cel.Compiler) -> None:
    # The docs/policy.md example.
    merged = request_rules(
        compiler,
        service=inline(f"{{effect: ALLOW, priority: 0, condition: {{{T}}}}}"),
        groups=(inline(f"{{name: no-contractors, effect: DENY, priority: 0, condition: {{{T}}}}}"),),
    )
    decision = evaluate(merged, EvalInput(make_ctx()))
    assert (decision.effect, decision.reason, decision.rule) == (
        DENY,
        MATCH,
        RuleRef("group/g1/inline[0]", "no-contractors"),
    )


def test_a_user_allow_at_a_lower_priority_beats_a_service_deny(compiler: cel.Compiler) -> None:
    merged = request_rules(
        compiler,
        service=inline(f"{{effect: DENY, priority: 0, condition: {{{T}}}}}"),
        user=inline(f"{{effect: ALLOW, priority: -10, condition: {{{T}}}}}"),
    )
    decision = evaluate(merged, EvalInput(make_ctx()))
    assert (decision.effect, decision.rule) == (ALLOW, RuleRef("user/alice/inline[0]", "rules[0]"))


def test_equal_rules_keep_service_user_group_order(compiler: cel.Compiler) -> None:
    line = f"{{effect: ALLOW, condition: {{{T}}}}}"
    merged = request_rules(compiler, service=inline(line), user=inline(line), groups=(inline(line), inline(line)))
    assert [r.ref.policy for r in merged] == [
        "service/my-api/inline[0]",
        "user/alice/inline[0]",
        "group/g1/inline[0]",
        "group/g2/inline[0]",
    ]
    assert evaluate(merged, EvalInput(make_ctx())).rule == RuleRef("service/my-api/inline[0]", "rules[0]")


def test_an_error_in_a_group_rule_denies_the_whole_request(compiler: cel.Compiler) -> None:
    merged = request_rules(
        compiler,
        service=inline(f"{{effect: ALLOW, priority: 1, condition: {{{T}}}}}"),
        groups=("{}", inline(f"{{effect: ALLOW, condition: {{{E}}}}}")),
    )
    decision = evaluate(merged, EvalInput(make_ctx()))
    assert (decision.reason, decision.rule) == (ERROR, RuleRef("group/g2/inline[0]", "rules[0]"))


def test_named_and_inline_policies_merge(compiler: cel.Compiler) -> None:
    named = {
        "allow-devs": RuleSet(
            compile_policy(
                "policy/allow-devs",
                policy(f"rules: [{{name: devs, effect: ALLOW, priority: 5, condition: {{{T}}}}}]"),
                compiler,
            )
        ),
        "block-get": RuleSet(
            compile_policy("policy/block-get", policy(f"rules: [{{effect: DENY, condition: {{{F}}}}}]"), compiler)
        ),
    }
    service = """
    inlinePolicies:
      - name: limits
        spec:
          rules:
            - {effect: DENY, priority: 7, condition: {matchAny: true}}
      - spec:
          rules:
            - {effect: ALLOW, priority: 6, condition: {matchAny: true}}
    policies: [allow-devs, missing, block-get, allow-devs]
    """
    merged = compile_authorization("service", "my-api", authorization(service), named, compiler)
    assert [str(r.ref) for r in merged] == [
        "policy/block-get#rules[0]",
        "policy/allow-devs#devs",
        "service/my-api/inline[1]#rules[0]",
        "service/my-api/inline/limits#rules[0]",
    ]
    decision = evaluate(merged, EvalInput(make_ctx()))
    assert decision.rule == RuleRef("policy/allow-devs", "devs")


def test_a_missing_named_policy_allows_nothing(compiler: cel.Compiler) -> None:
    merged = compile_authorization("user", "alice", authorization("policies: [gone]"), {}, compiler)
    assert len(merged) == 0
    assert evaluate(merged, EvalInput(make_ctx())) == Decision(DENY, NO_MATCH, None, None)


def test_merge_orders_many_sets(compiler: cel.Compiler) -> None:
    sets = [
        rules(
            f"rules: [{{effect: {e}, priority: {p}, condition: {{{T}}}}}]",
            compiler,
            ref=f"policy/{e.lower()}{p}",
        )
        for e, p in [("ALLOW", 3), ("DENY", 3), ("ALLOW", -2), ("DENY", 9), ("ALLOW", 0)]
    ]
    merged = RuleSet.merge(*sets)
    assert [r.ref.policy for r in merged] == [
        "policy/allow-2",
        "policy/allow0",
        "policy/deny3",
        "policy/allow3",
        "policy/deny9",
    ]
    assert len(RuleSet.merge()) == 0


def test_a_ruleset_sorts_what_it_is_given_and_is_immutable(compiler: cel.Compiler) -> None:
    ordered = rules(
        f"""
        rules:
          - {{effect: ALLOW, priority: 2, condition: {{{T}}}}}
          - {{effect: ALLOW, priority: 1, condition: {{{T}}}}}
          - {{effect: DENY, priority: 1, condition: {{{T}}}}}
        """,
        compiler,
    )
    shuffled = RuleSet(reversed(list(ordered)))
    assert [r.ref.rule for r in shuffled] == [r.ref.rule for r in ordered] == ["rules[2]", "rules[1]", "rules[0]"]
    assert isinstance(ordered[0], CompiledRule)
    with pytest.raises(AttributeError):
        ordered._rules = ()
    with pytest.raises(TypeError):
        ordered[0] = ordered[1]  # type: ignore[index]


def test_evaluate_takes_a_plain_sequence_in_the_given_order(compiler: cel.Compiler) -> None:
    given = list(
        rules(f"rules: [{{effect: DENY, condition: {{{T}}}}}, {{effect: ALLOW, condition: {{{T}}}}}]", compiler)
    )
    assert evaluate(given[::-1], EvalInput(make_ctx())).effect == ALLOW


# --- the seed my-api policy -----------------------------------------------------------------------------

SEED_CEL = """
rules:
  - effect: ALLOW
    condition:
      all:
        of:
          - match: ctx.user.spec.groups.hasAll("dev", "ops")
          - match: size(ctx.request.http.bodyMap.messages) < 4
          - match: ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o", "o1-mini"]
          - match: ctx.request.http.bodyMap.temperature < 0.7
"""

SEED_REGO = """
rules:
  - effect: ALLOW
    condition:
      opa:
        inline: |
          package wardgate.myapi

          allow if {
              every g in ["dev", "ops"] { g in input.ctx.user.spec.groups }
              count(input.ctx.request.http.bodyMap.messages) < 4
              input.ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o", "o1-mini"]
              input.ctx.request.http.bodyMap.temperature < 0.7
          }
"""

MESSAGE = {"role": "user", "content": "hi"}
SEED_CASES = [
    ("dev+ops, 3 messages, listed model, temperature 0.5", {}, MATCH),
    ("groups dev+ops+qa", {"user__spec__groups": ["qa", "ops", "dev"]}, MATCH),
    ("only dev", {"user__spec__groups": ["dev"]}, NO_MATCH),
    ("only ops", {"user__spec__groups": ["ops"]}, NO_MATCH),
    ("no groups", {"user__spec__groups": []}, NO_MATCH),
    ("1 message", {f"{BODY}__messages": [MESSAGE]}, MATCH),
    ("4 messages", {f"{BODY}__messages": [MESSAGE] * 4}, NO_MATCH),
    ("model gpt-4o", {f"{BODY}__model": "gpt-4o"}, MATCH),
    ("model o1-mini", {f"{BODY}__model": "o1-mini"}, MATCH),
    ("model gpt-4.1 (not listed)", {f"{BODY}__model": "gpt-4.1"}, NO_MATCH),
    ("model GPT-4O (case matters)", {f"{BODY}__model": "GPT-4O"}, NO_MATCH),
    ("temperature 0 (int)", {f"{BODY}__temperature": 0}, MATCH),
    ("temperature 0.5", {f"{BODY}__temperature": 0.5}, MATCH),
    ("temperature 0.69", {f"{BODY}__temperature": 0.69}, MATCH),
    ("temperature 0.7", {f"{BODY}__temperature": 0.7}, NO_MATCH),
    ("temperature 1 (int)", {f"{BODY}__temperature": 1}, NO_MATCH),
    ("temperature 1.0", {f"{BODY}__temperature": 1.0}, NO_MATCH),
]
SEED_REF = RuleRef("service/my-api/inline[0]", "rules[0]")


def seed_rules(compiler: cel.Compiler, text: str) -> RuleSet:
    auth = {"inlinePolicies": [{"spec": yaml.safe_load(text)}]}
    return compile_authorization("service", "my-api", Authorization.model_validate(auth), {}, compiler)


@pytest.mark.parametrize("language", ["cel", "rego"])
@pytest.mark.parametrize(("changes", "reason"), [c[1:] for c in SEED_CASES], ids=[c[0] for c in SEED_CASES])
def test_seed_policy(compiler: cel.Compiler, language: str, changes: dict[str, Any], reason: Reason) -> None:
    seed = seed_rules(compiler, SEED_CEL if language == "cel" else SEED_REGO)
    decision = evaluate(seed, EvalInput(make_ctx(**changes)))
    assert decision.reason == reason
    assert decision.effect == (ALLOW if reason == MATCH else DENY)
    assert decision.rule == (SEED_REF if reason == MATCH else None)


def test_seed_missing_temperature_is_a_condition_error_in_cel(compiler: cel.Compiler) -> None:
    decision = evaluate(seed_rules(compiler, SEED_CEL), EvalInput(make_ctx(**{f"{BODY}__temperature": DELETE})))
    assert (decision.effect, decision.reason, decision.rule) == (DENY, ERROR, SEED_REF)
    assert decision.detail is not None and "temperature" in decision.detail


def test_seed_missing_temperature_in_rego_is_undefined_so_no_match(compiler: cel.Compiler) -> None:
    # Rego reads a missing field as undefined: the body fails, allow is false. Still a deny.
    decision = evaluate(seed_rules(compiler, SEED_REGO), EvalInput(make_ctx(**{f"{BODY}__temperature": DELETE})))
    assert (decision.effect, decision.reason, decision.rule) == (DENY, NO_MATCH, None)


def test_seed_missing_messages_errors_before_temperature_is_read(compiler: cel.Compiler) -> None:
    decision = evaluate(
        seed_rules(compiler, SEED_CEL),
        EvalInput(make_ctx(**{f"{BODY}__messages": DELETE, f"{BODY}__temperature": 0.9})),
    )
    assert (decision.reason, decision.rule) == (ERROR, SEED_REF)
    assert decision.detail is not None and "messages" in decision.detail


# --- EvalInput ----------------------------------------------------------------------------------------


def test_eval_input_builds_each_form_once_and_only_when_needed(compiler: cel.Compiler) -> None:
    ctx = make_ctx()
    inp = EvalInput(ctx)
    assert inp._activation is None and inp._rego_input is None
    evaluate(rules(f"rules: [{{effect: ALLOW, condition: {{{T}}}}}]", compiler), inp)
    activation = inp.activation
    assert inp._rego_input is None
    evaluate(rules(f"rules: [{{effect: ALLOW, condition: {{{OT}}}}}]", compiler), inp)
    assert inp.activation is activation
    assert inp.rego_input is inp.rego_input
    assert inp.ctx is ctx


def test_evaluation_does_not_change_the_ctx(compiler: cel.Compiler) -> None:
    ctx = make_ctx()
    before = copy.deepcopy(ctx)
    inp = EvalInput(ctx)
    for text in (SEED_CEL, SEED_REGO):
        evaluate(seed_rules(compiler, text), inp)
    assert ctx == before


# one projection per policy


SHARED = """
rules:
  - name: admins
    effect: ALLOW
    condition:
      all:
        of:
          - match: 'ctx.user.spec.groups.hasAll("dev", "ops")'
          - match: size(ctx.request.http.bodyMap.messages) < 4
          - match: ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o"]
          - not:
              match: has(ctx.request.http.bodyMap.tools)
  - name: by-path
    effect: ALLOW
    condition:
      match: ctx.request.http.path.startsWith("/v1/models")
"""


def test_the_rules_of_a_policy_convert_ctx_once_per_request(compiler: cel.Compiler) -> None:
    """Each expression reading its own projection made one conversion and engine activation apiece."""
    ctx = make_ctx()
    ctx["user"]["spec"]["groups"] = ["dev", "ops"]
    ctx["request"]["http"]["bodyMap"] = {"model": "gpt-4o", "messages": [{"role": "user"}]}
    inp = EvalInput(ctx)
    assert evaluate(rules(SHARED, compiler), inp).rule == ref("admins")  # all four expressions ran
    assert len(inp.activation._handles) == 1


@pytest.mark.parametrize(
    ("body", "path", "rule"),
    [
        ({"model": "gpt-4o", "messages": [{}]}, "/v1/chat", "admins"),
        ({"model": "gpt-4o", "messages": [{}], "tools": []}, "/v1/chat", None),  # has() sees the field
        ({"model": "gpt-4o", "messages": [{}], "tools": []}, "/v1/models/x", "by-path"),
        ({"model": "other", "messages": [{}]}, "/v1/chat", None),
        ({"model": "gpt-4o", "messages": [{}, {}, {}, {}]}, "/v1/chat", None),
    ],
)
def test_a_shared_projection_decides_as_the_full_ctx_does(
    compiler: cel.Compiler, body: dict[str, Any], path: str, rule: str | None
) -> None:
    ctx = make_ctx()
    ctx["user"]["spec"]["groups"] = ["dev", "ops"]
    ctx["request"]["http"]["bodyMap"] = body
    ctx["request"]["http"]["path"] = path
    shared = evaluate(rules(SHARED, compiler), EvalInput(ctx))
    whole = RuleSet(compile_condition_rule(rule_spec, compiler, i) for i, rule_spec in enumerate(policy(SHARED).rules))
    alone = evaluate(whole, EvalInput(copy.deepcopy(ctx)))
    assert shared == alone
    assert shared.rule == (ref(rule) if rule else None)


def compile_condition_rule(rule: Any, compiler: cel.Compiler, i: int) -> CompiledRule:
    """A rule compiled on its own, each expression with its own projection (the way before sharing)."""
    return CompiledRule(
        effect=rule.effect,
        priority=rule.priority,
        condition=compile_condition(rule.condition, compiler),
        ref=RuleRef("policy/test", rule.name or f"rules[{i}]"),
        scope=rule.scope,
        reads_body=True,
        rego=False,
    )


@pytest.mark.parametrize(
    ("trees", "union"),
    [
        ([{"a": None}, {"b": {"c": None}}], {"a": None, "b": {"c": None}}),
        ([{"b": {"c": None}}, {"b": None}], {"b": None}),
        ([{"b": None}, {"b": {"c": None}}], {"b": None}),
        ([{"b": {"c": None}}, {"b": {"d": {"e": None}}}], {"b": {"c": None, "d": {"e": None}}}),
        ([{"a": None}, None], None),
        ([], {}),
    ],
)
def test_projection_union(trees: list[Any], union: Any) -> None:
    before = copy.deepcopy(trees)
    assert projection.union(trees) == union
    assert trees == before  # the programs' own trees are not changed


@pytest.mark.parametrize(
    ("outer", "inner", "covers"),
    [
        (None, None, True),
        (None, {"a": None}, True),
        ({"a": None}, None, False),
        ({"a": None}, {}, True),
        ({}, {}, True),
        ({"a": None}, {"a": {"b": None}}, True),
        ({"a": {"b": None}}, {"a": None}, False),  # a part of a does not hold all of a
        ({"a": {"b": None}}, {"a": {"b": {"c": None}}}, True),
        ({"a": {"b": None}}, {"a": {"c": None}}, False),
        ({"a": None, "b": None}, {"b": None}, True),
        ({"a": None}, {"a": None, "b": None}, False),
        ({"a": {"b": {"c": None}, "d": None}}, {"a": {"b": {"c": None}}}, True),
    ],
)
def test_projection_covers(outer: Any, inner: Any, covers: bool) -> None:
    assert projection.covers(outer, inner) is covers
    if covers:  # what it says: the projection along outer holds the one along inner
        value = {"a": {"b": {"c": 1, "e": 2}, "c": 3, "d": 4}, "b": 5}
        assert projection.project(projection.project(value, outer), inner) == projection.project(value, inner)


def test_an_activation_reuses_a_conversion_that_covers_the_paths(compiler: cel.Compiler) -> None:
    ctx = make_ctx()
    ctx["user"]["spec"]["groups"] = ["dev", "ops"]
    ctx["request"]["http"]["bodyMap"] = {"model": "gpt-4o", "messages": [{"role": "user"}]}
    wide = compiler.compile('ctx.user.spec.groups.hasAll("dev") && size(ctx.request.http.bodyMap.messages) == 1')
    model = compiler.compile('ctx.request.http.bodyMap.model == "gpt-4o"')
    path = compiler.compile('ctx.request.http.path.startsWith("/")')
    activation = EvalInput(ctx).activation
    both = projection.union([wide.paths, model.paths])
    assert wide.reading(both).evaluate_bool(activation)
    assert model.evaluate_bool(activation)  # its own projection is covered: no second conversion
    assert len(activation._made) == 1
    assert path.evaluate_bool(activation)  # not covered: converted for itself
    assert len(activation._made) == 2


def test_a_covering_conversion_that_failed_is_not_reused(compiler: cel.Compiler) -> None:
    """A value CEL cannot hold fails only the expressions that read it, covered or not."""
    ctx = make_ctx()
    ctx["request"]["http"]["bodyMap"] = {"model": "gpt-4o", "odd": {1, 2}}
    whole = compiler.compile("size(ctx.request.http.bodyMap) > 0")
    model = compiler.compile('ctx.request.http.bodyMap.model == "gpt-4o"')
    activation = EvalInput(ctx).activation
    with pytest.raises(cel.CelEvalError, match="set"):
        whole.evaluate_bool(activation)
    assert model.evaluate_bool(activation)


def test_projection_key_is_one_string_per_tree() -> None:
    """Requests look conversions up by key on every evaluation: a str (its hash is kept), equal for equal
    trees whatever their order, different for different trees."""
    a = projection.key({"user": {"spec": {"groups": None}}, "request": {"http": None}})
    b = projection.key({"request": {"http": None}, "user": {"spec": {"groups": None}}})
    assert isinstance(a, str) and a == b
    trees: list[Any] = [{}, {"a": None}, {"a": {}}, {"a": {"b": None}}, {"b": {"a": None}}, {"a": None, "b": None}]
    assert len({projection.key(t) for t in trees}) == len(trees)
    assert projection.key(None) is None
