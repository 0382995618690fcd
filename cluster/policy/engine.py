"""The policy decision: compile rules at build time, then pick the first matching rule per request.

Build time (on a config change, never on a request):

    compile_policy(ref, spec, cel) -> [CompiledRule]       one Policy or inline policy, sorted; its CEL
                                                           expressions read one shared projection of ctx
    compile_authorization(kind, name, auth, named, cel)    one Service/User/Group -> RuleSet

Request time (no I/O, no compiling, no awaiting; a Rego query runs on a worker thread
only so that its time can be bounded, see rego.py):

    inp = EvalInput(ctx)                                   once per request
    evaluate(RuleSet.merge(service, user, *groups), inp) -> Decision

(Merging 4 sets of 8 rules in all takes ~7 µs; a caller may cache the merged set per
service, user and group list.)

The combination rule. For a request by user U, member of groups G1..Gn, to Service S,
the rules of S (inline and named policies), of U (inline and named) and of each Gi
(inline and named) are merged into ONE list ordered by priority ascending, DENY
before ALLOW at equal priority. The first rule whose condition matches decides, with
its effect. No match denies. A condition that fails to evaluate denies at once, with
Reason.CONDITION_ERROR, whatever that rule's effect was (fail closed). This is
Octelium's order; it means a Group can veto what a Service allows at the same
priority (a Service ALLOW at 0 and a Group DENY at 0 give DENY), and a lower
priority number anywhere comes first (a User ALLOW at -10 beats a Service DENY at 0).

Among rules equal in priority and effect the order is fixed, so that the rule named
in the decision (and an erroring rule's place) is deterministic: the sets in the
order given to RuleSet.merge (service, user, then groups in the user's order);
within one resource, its inline policies in order, then its named policies in the
order listed; within one policy, declaration order.

Conditions evaluate left to right: ``all`` stops at the first false, ``any`` at the
first true, ``not`` negates, ``matchAny`` is true. An error stops evaluation and is
never read as false, so ``not`` of an error is an error too. What short-circuiting
skips cannot fail: ``all: [false, <would fail>]`` is simply false.

docs/policy.md has the user-facing version with examples.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from wardgate.cluster.policy import cel, projection, rego
from wardgate.cluster.policy.reasons import Reason
from wardgate.cluster.resources.policy import Authorization, Condition, Effect, PolicySpec, Scope

__all__ = [
    "CompiledCondition",
    "CompiledRule",
    "ConditionError",
    "Decision",
    "EvalInput",
    "RuleRef",
    "RuleSet",
    "compile_authorization",
    "compile_condition",
    "compile_conditions",
    "compile_policy",
    "condition_reads_body",
    "condition_uses_rego",
    "evaluate",
]


class ConditionError(Exception):
    """A condition could not be evaluated on this request; the message says why (for logs only)."""


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Where a rule came from, for decisions and access logs.

    ``policy`` is ``policy/<name>`` for a Policy resource and ``<kind>/<name>/inline[<i>]``
    (or ``<kind>/<name>/inline/<policy name>`` when the inline policy has a name) for an
    inline policy of a Service, User or Group. ``rule`` is the rule's name, else ``rules[<i>]``.
    """

    policy: str
    rule: str

    def __str__(self) -> str:
        return f"{self.policy}#{self.rule}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request. ``rule`` is None for NO_MATCH.

    ``detail`` is the condition error's text with CONDITION_ERROR, for logs only: it
    can quote request values and policy source, so it is never shown to clients.
    """

    effect: Effect
    reason: Reason
    rule: RuleRef | None = None
    detail: str | None = None

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW


class EvalInput:
    """What conditions evaluate against, built once per request from the policy ctx.

    Holds the plain ``ctx`` mapping (see DESIGN.md, "The policy context") and makes,
    on first use, the CEL Activation and the Rego input from it: a request that only
    meets CEL conditions never pays for the Rego conversion, and the other way round.
    Do not mutate ``ctx`` while the EvalInput is in use. One request, one task.
    """

    __slots__ = ("_activation", "_rego_input", "ctx")

    def __init__(self, ctx: Mapping[str, object]) -> None:
        self.ctx = ctx
        self._activation: cel.Activation | None = None
        self._rego_input: rego.RegoInput | None = None

    @property
    def activation(self) -> cel.Activation:
        if self._activation is None:
            self._activation = cel.Activation({"ctx": self.ctx})
        return self._activation

    @property
    def rego_input(self) -> rego.RegoInput:
        if self._rego_input is None:
            self._rego_input = rego.RegoInput({"ctx": self.ctx})
        return self._rego_input


CompiledCondition = Callable[[EvalInput], bool]
"""A condition ready to run: True or False, or ConditionError when it cannot be evaluated."""


def _match(program: cel.Program) -> CompiledCondition:
    def match(inp: EvalInput) -> bool:
        try:
            return program.evaluate_bool(inp.activation)
        except cel.CelEvalError as exc:
            raise ConditionError(f"CEL: {exc}") from exc

    return match


def _opa(program: rego.RegoProgram) -> CompiledCondition:
    def opa(inp: EvalInput) -> bool:
        try:
            return program.allow(inp.rego_input)
        except rego.RegoEvalError as exc:
            raise ConditionError(f"Rego ({program.package}): {exc}") from exc

    return opa


def _match_any(inp: EvalInput) -> bool:
    return True


def _all(conditions: tuple[CompiledCondition, ...]) -> CompiledCondition:
    def all_of(inp: EvalInput) -> bool:
        return all(condition(inp) for condition in conditions)

    return all_of


def _any(conditions: tuple[CompiledCondition, ...]) -> CompiledCondition:
    def any_of(inp: EvalInput) -> bool:
        return any(condition(inp) for condition in conditions)

    return any_of


def _not(condition: CompiledCondition) -> CompiledCondition:
    def negated(inp: EvalInput) -> bool:
        return not condition(inp)

    return negated


def compile_condition(
    cond: Condition, cel_compiler: cel.Compiler, programs: Mapping[str, cel.Program] | None = None
) -> CompiledCondition:
    """Compile a condition tree (its CEL taken from ``programs`` where given: see compile_conditions). Raises
    CelCompileError or RegoCompileError (admission should have)."""
    if cond.match is not None:
        program = programs.get(cond.match) if programs is not None else None
        return _match(program or cel_compiler.compile(cond.match))
    if cond.match_any is not None:
        return _match_any
    if cond.all is not None:
        return _all(tuple(compile_condition(c, cel_compiler, programs) for c in cond.all.of))
    if cond.any is not None:
        return _any(tuple(compile_condition(c, cel_compiler, programs) for c in cond.any.of))
    if cond.not_ is not None:
        return _not(compile_condition(cond.not_, cel_compiler, programs))
    if cond.opa is not None:
        return _opa(rego.compile_rego(cond.opa.inline))
    raise AssertionError("Condition guarantees exactly one form")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to evaluate: its condition compiled, its ref for the decision."""

    effect: Effect
    priority: int
    condition: CompiledCondition
    ref: RuleRef
    scope: Scope = Scope.SERVICES
    reads_body: bool = False
    """The condition's source names the body (`bodyMap`, `body`): the request body must be parsed for it."""
    rego: bool = False
    """The condition has a Rego part: its evaluation can take long enough to keep off the event loop."""
    cel_reads: projection.Paths = field(default_factory=dict)
    """The ctx paths its policy's CEL expressions read together ({} without CEL): a Service's dynamic-config
    rules convert these too, so that its policies find them converted (cel.Activation)."""


def _order(rule: CompiledRule) -> tuple[int, int]:
    """The sort key: priority ascending, then DENY before ALLOW. Ties keep their order (stable)."""
    return rule.priority, 0 if rule.effect is Effect.DENY else 1


def compile_conditions(
    conds: Sequence[Condition], cel_compiler: cel.Compiler, also: Iterable[projection.Paths] = ()
) -> list[CompiledCondition]:
    """Compile conditions that one request meets together (the rules of a policy, a Service's dynamic-config
    rules): their CEL expressions read one projection of ctx, the union of what each reads and of ``also``,
    so a request converts ctx and makes an engine activation once for the group, not once per expression
    (and once for the groups whose paths ``also`` names: cel.Activation reuses a covering conversion)."""
    return _compile_group(conds, cel_compiler, also)[0]


def _compile_group(
    conds: Sequence[Condition], cel_compiler: cel.Compiler, also: Iterable[projection.Paths] = ()
) -> tuple[list[CompiledCondition], projection.Paths]:
    sources = list(dict.fromkeys(source for cond in conds for source in _cel_sources(cond)))
    compiled = [cel_compiler.compile(source) for source in sources]
    if not compiled:
        return [compile_condition(cond, cel_compiler) for cond in conds], {}
    shared = projection.union([*(program.paths for program in compiled), *also])
    programs = {program.source: program.reading(shared) for program in compiled}
    return [compile_condition(cond, cel_compiler, programs) for cond in conds], shared


def _cel_sources(cond: Condition) -> Iterator[str]:
    if cond.match is not None:
        yield cond.match
    for child in (cond.all.of if cond.all else []) + (cond.any.of if cond.any else []):
        yield from _cel_sources(child)
    if cond.not_ is not None:
        yield from _cel_sources(cond.not_)


def condition_reads_body(cond: Condition) -> bool:
    """Whether a condition may read the request body (a plain text check of its CEL and Rego sources: an
    over-estimate costs a parse, an under-estimate would hide the body from a rule)."""
    if cond.match is not None:
        return "body" in cond.match
    if cond.opa is not None:
        return "body" in cond.opa.inline
    children = (cond.all.of if cond.all else []) + (cond.any.of if cond.any else [])
    if cond.not_ is not None:
        children = [cond.not_]
    return any(condition_reads_body(c) for c in children)


def condition_uses_rego(cond: Condition) -> bool:
    if cond.opa is not None:
        return True
    children = (cond.all.of if cond.all else []) + (cond.any.of if cond.any else [])
    if cond.not_ is not None:
        children = [cond.not_]
    return any(condition_uses_rego(c) for c in children)


def compile_policy(policy_ref: str, spec: PolicySpec, cel_compiler: cel.Compiler) -> list[CompiledRule]:
    """The rules of one policy, compiled and sorted (priority, DENY first, declaration order)."""
    conditions, reads = _compile_group([rule.condition for rule in spec.rules], cel_compiler)
    rules = [
        CompiledRule(
            effect=rule.effect,
            priority=rule.priority,
            condition=conditions[i],
            ref=RuleRef(policy_ref, rule.name or f"rules[{i}]"),
            scope=rule.scope,
            reads_body=condition_reads_body(rule.condition),
            rego=condition_uses_rego(rule.condition),
            cel_reads=reads,
        )
        for i, rule in enumerate(spec.rules)
    ]
    rules.sort(key=_order)
    return rules


class RuleSet(Sequence[CompiledRule]):
    """An immutable list of compiled rules in evaluation order.

    The constructor sorts (stably) by priority then DENY first, so any iterable will
    do; ``merge`` keeps that order across sets without re-sorting.
    """

    __slots__ = ("_rules",)

    _rules: tuple[CompiledRule, ...]

    def __init__(self, rules: Iterable[CompiledRule] = ()) -> None:
        object.__setattr__(self, "_rules", tuple(sorted(rules, key=_order)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RuleSet is immutable; cannot set {name!r}")

    @classmethod
    def merge(cls, *sets: RuleSet) -> RuleSet:
        """One set holding every rule; equal keys keep the order of ``sets``, then their own."""
        merged = cls.__new__(cls)
        object.__setattr__(merged, "_rules", tuple(heapq.merge(*sets, key=_order)))
        return merged

    @overload
    def __getitem__(self, index: int) -> CompiledRule: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[CompiledRule]: ...
    def __getitem__(self, index: int | slice) -> CompiledRule | Sequence[CompiledRule]:
        return self._rules[index]

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({[str(r.ref) for r in self._rules]})"

    @property
    def reads_body(self) -> bool:
        return any(r.reads_body for r in self._rules)

    @property
    def uses_rego(self) -> bool:
        return any(r.rego for r in self._rules)

    def scoped(self, scope: Scope) -> RuleSet:
        """The rules that govern `scope` (SERVICES or ADMIN): those of that scope and those of scope ALL."""
        kept = self.__class__.__new__(self.__class__)
        object.__setattr__(kept, "_rules", tuple(r for r in self._rules if r.scope in (scope, Scope.ALL)))
        return kept


def evaluate(rules: RuleSet | Sequence[CompiledRule], inp: EvalInput) -> Decision:
    """First match wins; ``rules`` are in evaluation order already. An error denies; no match denies."""
    for rule in rules:
        try:
            matched = rule.condition(inp)
        except ConditionError as exc:
            return Decision(Effect.DENY, Reason.CONDITION_ERROR, rule.ref, str(exc))
        if matched:
            return Decision(rule.effect, Reason.RULE_MATCH, rule.ref)
    return Decision(Effect.DENY, Reason.NO_MATCH)


def compile_authorization(
    kind: str,
    name: str,
    authorization: Authorization,
    named: Mapping[str, RuleSet],
    cel_compiler: cel.Compiler,
) -> RuleSet:
    """The rules one Service, User or Group brings: its inline policies compiled, its named ones merged in.

    ``kind`` is the lower-case kind (``service``, ``user``, ``group``), used in the refs.
    ``named`` maps Policy names to their RuleSets, compiled once per Policy and shared.
    A named policy missing from ``named`` contributes nothing. Nothing can allow by
    being absent, because the default is deny (admission only warns about unknown
    names, so Policies may be applied after their users). A Policy deleted later
    simply stops matching; a deleted DENY policy does stop denying.
    """
    inline = [
        RuleSet(
            compile_policy(
                f"{kind}/{name}/inline/{policy.name}" if policy.name else f"{kind}/{name}/inline[{i}]",
                policy.spec,
                cel_compiler,
            )
        )
        for i, policy in enumerate(authorization.inline_policies)
    ]
    attached = [named[p] for p in dict.fromkeys(authorization.policies) if p in named]
    return RuleSet.merge(*inline, *attached)
