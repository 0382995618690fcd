"""Measure the candidate CEL engines on the seed's policy expressions.

Run with any interpreter: ``python bench/cel_engines.py [--quick]``. Each engine that
imports is measured (compile µs, eval µs per expression, one request's cost) and
checked against the correctness cases; a missing engine is skipped with a note.
common-expression-language installs a top-level ``cel`` package, so it lives in its
own venv; run the script once per venv. docs/cel-engines.md has the results.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import platform
import statistics
import sys
import timeit
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from request_context import request_ctx

SEEDS = [
    'ctx.user.spec.groups.hasAll("dev", "ops")',
    "size(ctx.request.http.bodyMap.messages) < 4",
    'ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o", "o1-mini"]',
    "ctx.request.http.bodyMap.temperature < 0.7",
    'ctx.request.http.bodyMap.model == "gpt-4o-mini"',
    'ctx.request.http.method == "POST" && ctx.request.http.path.startsWith("/v1/")',
]

CTX = request_ctx("openai", raw_body=False)

ERROR = "error"


@dataclass(frozen=True)
class Case:
    source: str
    expected: object
    changes: tuple[tuple[str, object], ...] = ()

    def ctx(self) -> dict[str, Any]:
        ctx = copy.deepcopy(CTX)
        for path, value in self.changes:
            *parents, leaf = path.split(".")
            node = ctx
            for name in parents:
                node = node[name]
            node[leaf] = value
        return ctx


def _temp(value: object) -> tuple[tuple[str, object], ...]:
    return (("request.http.bodyMap.temperature", value),)


CASES = [
    *(Case(s, True) for s in SEEDS),
    Case(SEEDS[0], False, (("user.spec.groups", ["dev"]),)),
    Case(SEEDS[1], False, (("request.http.bodyMap.messages", [{}] * 4),)),
    Case(SEEDS[2], False, (("request.http.bodyMap.model", "gpt-4.5"),)),
    Case(SEEDS[4], False, (("request.http.bodyMap.model", "gpt-4o"),)),
    Case(SEEDS[5], False, (("request.http.method", "GET"),)),
    Case(SEEDS[3], True, _temp(0)),
    Case(SEEDS[3], True, _temp(0.5)),
    Case(SEEDS[3], False, _temp(1)),
    Case(SEEDS[3], False, _temp(1.0)),
    Case(SEEDS[3], False, _temp(0.7)),
    Case("ctx.request.http.bodyMap.max_tokens == 256.0", True),
    Case('ctx.user.spec.groups.hasAll("dev")', True),
    Case('ctx.user.spec.groups.hasAll("dev", "ops", "qa")', True),
    Case('ctx.user.spec.groups.hasAll("dev", "admin")', False),
    Case('ctx.user.spec.groups.hasAny("admin")', False),
    Case('ctx.user.spec.groups.hasAny("admin", "qa")', True),
    Case('ctx.user.spec.groups.hasAny("a", "b", "c")', False),
    Case("has(ctx.request.http.bodyMap.missing)", False),
    Case("has(ctx.request.http.bodyMap.model)", True),
    Case("ctx.request.http.bodyMap.missing == 1", ERROR),
    Case('ctx.request.http.path.startsWith("/v1/")', True),
    Case('ctx.request.http.path.contains("chat")', True),
    Case('ctx.request.http.path.matches("^/v1/(chat/)?completions$")', True),
    Case('ctx.request.http.path.matches("^/v2/")', False),
    Case("size(ctx.request.http.path) == 20", True),
    Case("size(ctx.user.spec.groups) == 3", True),
    Case('1 + "a" == 2', ERROR),
]


class Engine:
    """One way of running CEL: compile(source) -> run(prepared), prepare(ctx) per request."""

    name = ""
    version = ""

    def compile(self, source: str) -> Callable[[Any], object]:
        raise NotImplementedError

    def prepare(self, ctx: dict[str, Any]) -> Any:
        raise NotImplementedError


def _contains(items: Any, wanted: object) -> bool:
    return any(item == wanted and (type(item) is bool) == (type(wanted) is bool) for item in items)


def _has_all(items: Any, *wanted: object) -> bool:
    return all(_contains(items, w) for w in wanted)


def _has_any(items: Any, *wanted: object) -> bool:
    return any(_contains(items, w) for w in wanted)


class CelExprPython(Engine):
    """cel-expr-python: the CEL C++ runtime. ``per_eval`` converts the dict on every eval."""

    def __init__(self, *, per_eval: bool = False) -> None:
        from cel_expr_python import cel
        from cel_expr_python.ext import ext_strings

        self.name = "cel-expr-python" + (" (dict per eval)" if per_eval else "")
        self.version = importlib.metadata.version("cel-expr-python")
        self.per_eval = per_eval

        def decl(name: str, impl: Callable[..., bool]) -> Any:
            overloads = [
                cel.Overload(
                    f"list_{name}_{n}",
                    return_type=cel.Type.BOOL,
                    parameters=[cel.Type.List(cel.Type.DYN)] + [cel.Type.DYN] * n,
                    is_member=True,
                    impl=impl,
                )
                for n in range(1, 9)
            ]
            return cel.FunctionDecl(name, overloads)

        lists = cel.CelExtension("bench.lists", [decl("hasAll", _has_all), decl("hasAny", _has_any)])
        self.env = cel.NewEnv(
            variables={"ctx": cel.Type.Map(cel.Type.STRING, cel.Type.DYN)},
            extensions=[lists, ext_strings.ExtStrings()],
        )
        self.error_type = cel.Type.ERROR

    def compile(self, source: str) -> Callable[[Any], object]:
        expr = self.env.compile(source)
        error_type = self.error_type
        if self.per_eval:

            def run_data(data: Any) -> object:
                value = expr.eval(data=data)
                if value.type() == error_type:
                    raise RuntimeError(value.value())
                return value.value()

            return run_data

        def run(activation: Any) -> object:
            value = expr.eval(activation)
            if value.type() == error_type:
                raise RuntimeError(value.value())
            return value.value()

        return run

    def prepare(self, ctx: dict[str, Any]) -> Any:
        return {"ctx": ctx} if self.per_eval else self.env.Activation({"ctx": ctx})


class WardgateWrapper(Engine):
    """cluster.policy.cel (cel-expr-python behind the project's wrapper), for its overhead."""

    def __init__(self) -> None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from wardgate.cluster.policy import cel

        self.cel = cel
        self.name = "cluster.policy.cel wrapper"
        self.version = importlib.metadata.version("cel-expr-python")

    def compile(self, source: str) -> Callable[[Any], object]:
        return self.cel.Compiler().compile(source).evaluate_bool

    def prepare(self, ctx: dict[str, Any]) -> Any:
        return self.cel.Activation({"ctx": ctx})


class CommonExpressionLanguage(Engine):
    """common-expression-language: the Rust ``cel`` crate via PyO3 (top-level ``cel``)."""

    def __init__(self) -> None:
        import cel

        if not hasattr(cel, "Context") or not hasattr(cel, "compile"):
            raise ImportError("the importable 'cel' is not common-expression-language")
        self.cel = cel
        self.name = "common-expression-language"
        self.version = importlib.metadata.version("common-expression-language")

    def compile(self, source: str) -> Callable[[Any], object]:
        program = self.cel.compile(source)
        return program.execute

    def prepare(self, ctx: dict[str, Any]) -> Any:
        return self.cel.Context(variables={"ctx": ctx}, functions={"hasAll": _has_all, "hasAny": _has_any})


class CelPython(Engine):
    """cel-python (celpy): a pure-Python interpreter over a lark parse tree."""

    def __init__(self, *, compiled: bool = False) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import celpy
            import celpy.celtypes

        self.celpy = celpy
        self.name = "cel-python" + (" (CompiledRunner)" if compiled else "")
        self.version = importlib.metadata.version("cel-python")
        self.runner = celpy.CompiledRunner if compiled else None
        self.env = celpy.Environment(runner_class=self.runner)
        bool_type = celpy.celtypes.BoolType
        self.functions = {
            "hasAll": lambda items, *w: bool_type(_has_all(items, *w)),
            "hasAny": lambda items, *w: bool_type(_has_any(items, *w)),
        }

    def compile(self, source: str) -> Callable[[Any], object]:
        try:
            program = self.env.program(self.env.compile(source), functions=self.functions)
        except Exception:
            # A failed transpile leaves CompiledRunner's Environment broken for every later compile.
            self.env = self.celpy.Environment(runner_class=self.runner)
            raise
        eval_error = self.celpy.CELEvalError

        def run(activation: Any) -> object:
            result = program.evaluate(activation)
            if isinstance(result, eval_error):
                raise RuntimeError(str(result))
            return result

        return run

    def prepare(self, ctx: dict[str, Any]) -> Any:
        return {"ctx": self.celpy.json_to_cel(ctx)}


def engines() -> Iterator[Engine | str]:
    factories: list[tuple[str, Callable[[], Engine]]] = [
        ("cel-expr-python", CelExprPython),
        ("cel-expr-python (dict per eval)", lambda: CelExprPython(per_eval=True)),
        ("cluster.policy.cel wrapper", WardgateWrapper),
        ("common-expression-language", CommonExpressionLanguage),
        # CompiledRunner first: after the interpreter has run, celpy 0.5.0's transpiler fails
        # on every expression in the same process ('Tree' object has no attribute ...).
        ("cel-python (CompiledRunner)", lambda: CelPython(compiled=True)),
        ("cel-python", CelPython),
    ]
    for name, factory in factories:
        try:
            yield factory()
        except Exception as exc:
            yield f"skipped {name}: {type(exc).__name__}: {exc}"


def per_call_us(fn: Callable[[], object], quick: bool) -> float:
    """Best of a few repeats, each long enough to dwarf timer overhead."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    repeats = timer.repeat(repeat=2 if quick else 5, number=max(1, number // (4 if quick else 1)))
    return min(repeats) / max(1, number // (4 if quick else 1)) * 1e6


def check_cases(engine: Engine) -> list[str]:
    failures = []
    for case in CASES:
        try:
            program = engine.compile(case.source)
            outcome: object = program(engine.prepare(case.ctx()))
            outcome = bool(outcome) if type(outcome).__name__ == "BoolType" else outcome
        except Exception as exc:
            outcome, detail = ERROR, f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        else:
            detail = repr(outcome)
        if not (outcome == case.expected and type(outcome) is type(case.expected)):
            changes = ", ".join(f"{p}={v!r}" for p, v in case.changes)
            failures.append(f"{case.source} [{changes}] expected {case.expected!r}, got {detail}")
    return failures


@dataclass
class Result:
    engine: str
    version: str
    compile_us: list[float | None]
    eval_us: list[float | None]
    request_us: float | None
    passed: int


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'fail':>{width}}"


def measure(engine: Engine, quick: bool) -> Result:
    print(f"\n## {engine.name} {engine.version}")
    print(f"{'expression':<78} {'compile µs':>11} {'eval µs':>9}")
    ctx = copy.deepcopy(CTX)
    prepared = engine.prepare(ctx)
    programs = []
    compiles: list[float | None] = []
    evals: list[float | None] = []
    for source in SEEDS:
        try:
            compile_us = per_call_us(lambda s=source: engine.compile(s), quick)
            program = engine.compile(source)
            program(prepared)
            eval_us = per_call_us(lambda p=program: p(prepared), quick)
        except Exception as exc:
            compiles.append(None)
            evals.append(None)
            print(f"{source:<78} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
            continue
        programs.append(program)
        compiles.append(compile_us)
        evals.append(eval_us)
        print(f"{source:<78} {compile_us:>11.1f} {eval_us:>9.2f}")

    def one_request() -> None:
        request = engine.prepare(ctx)
        for program in programs:
            program(request)

    request_us = None
    if len(programs) == len(SEEDS):
        prepare_us = per_call_us(lambda: engine.prepare(ctx), quick)
        request_us = per_call_us(one_request, quick)
        print(f"prepare per request: {prepare_us:.2f} µs; prepare + the 6 seed rules: {request_us:.2f} µs")
    failures = check_cases(engine)
    verdict = "PASS" if not failures else "FAIL"
    print(f"correctness: {verdict} {len(CASES) - len(failures)}/{len(CASES)}")
    for failure in failures:
        print(f"  - {failure}")
    return Result(engine.name, engine.version, compiles, evals, request_us, len(CASES) - len(failures))


def summary(results: list[Result]) -> None:
    print("\n## Summary (µs; e1..e6 = eval of each seed expression, request = prepare + all six)")
    seeds = "".join(f"{f'e{i}':>7}" for i in range(1, len(SEEDS) + 1))
    print(f"{'engine':<34}{'version':>9}{'compile':>9}{seeds}{'request':>9}  correctness")
    for r in results:
        done = [c for c in r.compile_us if c is not None]
        compile_median = statistics.median(done) if done else None
        evals = "".join(_fmt(e, 7, 2) for e in r.eval_us)
        verdict = "PASS" if r.passed == len(CASES) else "FAIL"
        print(
            f"{r.engine:<34}{r.version:>9}{_fmt(compile_median, 9)}{evals}{_fmt(r.request_us, 9)}"
            f"  {verdict} {r.passed}/{len(CASES)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args()
    print(
        f"# CEL engines: Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, interpreter {sys.executable}"
    )
    results = []
    for engine in engines():
        if isinstance(engine, str):
            print(f"\n{engine}")
        else:
            results.append(measure(engine, args.quick))
    summary(results)


if __name__ == "__main__":
    main()
