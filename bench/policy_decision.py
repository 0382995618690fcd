"""Measure one policy decision for the seed `my-api` policy, in CEL and in Rego, against the request budget.

Run from the repository root: ``.venv/bin/python bench/policy_decision.py [--quick]``.

Columns: "decision" evaluates with an EvalInput that earlier iterations already
converted (the cost of the rules alone); "with EvalInput" builds a fresh EvalInput
from the ctx in every iteration, as a request does, so the ctx conversion (CEL
Activation or Rego input) is included. The budget is 333 µs of CPU per request
(3,000 req/s on one core), shared by everything the gateway does for a request.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from request_context import request_ctx

from wardgate.cluster.policy import cel
from wardgate.cluster.policy.engine import EvalInput, RuleSet, compile_authorization, evaluate
from wardgate.cluster.policy.reasons import Reason
from wardgate.cluster.policy.rego import RegoInput, compile_rego
from wardgate.cluster.resources.policy import Authorization

BUDGET_US = 333.0

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

SEED_REGO_MODULE = """package wardgate.myapi

allow if {
    every g in ["dev", "ops"] { g in input.ctx.user.spec.groups }
    count(input.ctx.request.http.bodyMap.messages) < 4
    input.ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o", "o1-mini"]
    input.ctx.request.http.bodyMap.temperature < 0.7
}
"""

CTX = request_ctx("my-api", raw_body=True)


def service_rules(policy: dict[str, Any], compiler: cel.Compiler) -> RuleSet:
    auth = Authorization.model_validate({"inlinePolicies": [{"spec": policy}]})
    return compile_authorization("service", "my-api", auth, {}, compiler)


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> tuple[float, float]:
    """(median, min) µs per call over ``repeat`` runs of ``number`` calls."""
    fn()
    runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return statistics.median(runs), min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (noisier)")
    args = parser.parse_args()
    number, repeat = (200, 3) if args.quick else (2000, 7)

    compiler = cel.Compiler()
    cel_rules = service_rules(yaml.safe_load(SEED_CEL), compiler)
    rego_rules = service_rules(
        {"rules": [{"effect": "ALLOW", "condition": {"opa": {"inline": SEED_REGO_MODULE}}}]}, compiler
    )
    program = compile_rego(SEED_REGO_MODULE)

    for name, rules in (("CEL", cel_rules), ("Rego", rego_rules)):
        decision = evaluate(rules, EvalInput(CTX))
        if decision.reason is not Reason.RULE_MATCH:
            raise SystemExit(f"{name}: the seed request should be allowed, got {decision}")

    warm = EvalInput(CTX)
    warm_document = RegoInput({"ctx": CTX})
    rows = [
        (
            "CEL, seed my-api (4 conditions)",
            lambda: evaluate(cel_rules, warm),
            lambda: evaluate(cel_rules, EvalInput(CTX)),
        ),
        (
            "Rego, seed my-api (engine: 50 ms time bound)",
            lambda: evaluate(rego_rules, warm),
            lambda: evaluate(rego_rules, EvalInput(CTX)),
        ),
        (
            "Rego, seed my-api (time_limit=None, no thread)",
            lambda: program.allow(warm_document, time_limit=None),
            lambda: program.allow(RegoInput({"ctx": CTX}), time_limit=None),
        ),
    ]

    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; budget {BUDGET_US:.0f} µs"
    )
    print(f"median (min) of {repeat} runs x {number} decisions\n")
    header = f"{'policy':48} {'decision µs':>16} {'with EvalInput µs':>18} {'of budget':>10}"
    print(header)
    print("-" * len(header))
    for name, decision_only, with_input in rows:
        bare, bare_min = per_call_us(decision_only, number, repeat)
        full, full_min = per_call_us(with_input, number, repeat)
        cells = f"{bare:7.1f} ({bare_min:6.1f}) {full:8.1f} ({full_min:6.1f})"
        print(f"{name:48} {cells} {full / BUDGET_US:10.0%}")


if __name__ == "__main__":
    main()
