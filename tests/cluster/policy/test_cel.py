"""cluster.policy.cel: the seed's expressions, numbers, extensions, errors and the cache."""

from __future__ import annotations

import copy
import datetime
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from wardgate.cluster.policy.cel import (
    MAX_EXPRESSION_LENGTH,
    Activation,
    CelCompileError,
    CelError,
    CelEvalError,
    Compiler,
    Program,
    check,
)

SEED_GROUPS = 'ctx.user.spec.groups.hasAll("dev", "ops")'
SEED_MESSAGES = "size(ctx.request.http.bodyMap.messages) < 4"
SEED_MODEL_IN = 'ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o", "o1-mini"]'
SEED_TEMPERATURE = "ctx.request.http.bodyMap.temperature < 0.7"
SEED_ROUTE = 'ctx.request.http.bodyMap.model == "gpt-4o-mini"'
SEED_METHOD_PATH = 'ctx.request.http.method == "POST" && ctx.request.http.path.startsWith("/v1/")'


def make_ctx(**changes: Any) -> dict[str, object]:
    """A request context; ``changes`` maps a dotted path under ctx to a new value."""
    ctx: dict[str, Any] = {
        "user": {
            "metadata": {"name": "alice"},
            "spec": {"type": "HUMAN", "groups": ["dev", "ops", "qa"], "email": "alice@example.com"},
        },
        "session": {"metadata": {"name": "s-1"}, "spec": {"type": "CLIENT"}},
        "service": {"metadata": {"name": "openai"}, "spec": {"isPublic": False}},
        "request": {
            "http": {
                "method": "POST",
                "path": "/v1/chat/completions",
                "query": {},
                "headers": {"content-type": "application/json"},
                "host": "openai.example.com",
                "scheme": "https",
                "bodyMap": {
                    "model": "gpt-4o-mini",
                    "temperature": 0.5,
                    "max_tokens": 100,
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
        node[leaf] = value
    return {"ctx": ctx}


BODY = "request__http__bodyMap"


@pytest.fixture(scope="module")
def compiler() -> Compiler:
    return Compiler()


def run(compiler: Compiler, source: str, **changes: Any) -> bool:
    return compiler.compile(source).evaluate_bool(Activation(make_ctx(**changes)))


@pytest.mark.parametrize(
    ("source", "changes", "expected"),
    [
        (SEED_GROUPS, {}, True),
        (SEED_GROUPS, {"user__spec__groups": ["dev"]}, False),
        (SEED_GROUPS, {"user__spec__groups": []}, False),
        (SEED_MESSAGES, {}, True),
        (SEED_MESSAGES, {f"{BODY}__messages": [{"role": "user"}] * 4}, False),
        (SEED_MESSAGES, {f"{BODY}__messages": []}, True),
        (SEED_MODEL_IN, {}, True),
        (SEED_MODEL_IN, {f"{BODY}__model": "o1-mini"}, True),
        (SEED_MODEL_IN, {f"{BODY}__model": "gpt-4.5"}, False),
        (SEED_MODEL_IN, {f"{BODY}__model": 4}, False),
        (SEED_TEMPERATURE, {}, True),
        (SEED_TEMPERATURE, {f"{BODY}__temperature": 0.9}, False),
        (SEED_ROUTE, {}, True),
        (SEED_ROUTE, {f"{BODY}__model": "gpt-4o"}, False),
        (SEED_METHOD_PATH, {}, True),
        (SEED_METHOD_PATH, {"request__http__method": "GET"}, False),
        (SEED_METHOD_PATH, {"request__http__path": "/v2/chat"}, False),
        (SEED_METHOD_PATH, {"request__http__path": "/v1"}, False),
    ],
)
def test_seed_expressions(compiler: Compiler, source: str, changes: dict[str, Any], expected: bool) -> None:
    assert run(compiler, source, **changes) is expected


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (0, True),
        (0.5, True),
        (0.69999, True),
        (0.7, False),
        (1, False),
        (1.0, False),
        (2**63, False),
        (-1, True),
    ],
)
def test_temperature_int_and_double(compiler: Compiler, temperature: float, expected: bool) -> None:
    assert run(compiler, SEED_TEMPERATURE, **{f"{BODY}__temperature": temperature}) is expected


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("ctx.request.http.bodyMap.n == 100.0", 100, True),
        ("ctx.request.http.bodyMap.n == 100", 100.0, True),
        ("ctx.request.http.bodyMap.n != 100", 100.5, True),
        ("ctx.request.http.bodyMap.n >= 1u", 1.0, True),
        ("ctx.request.http.bodyMap.n in [0.5, 1.0]", 1, True),
        ("ctx.request.http.bodyMap.n in [1, 2]", 2.0, True),
        ("ctx.request.http.bodyMap.n in [1, 2]", 2.5, False),
        ("double(ctx.request.http.bodyMap.n) * 2.0 < 1.4", 1, False),
        ("double(ctx.request.http.bodyMap.n) * 2.0 < 1.4", 0, True),
        ("ctx.request.http.bodyMap.n + 1 == 2", 1, True),
    ],
)
def test_numbers_compare_across_int_and_double(compiler: Compiler, source: str, value: float, expected: bool) -> None:
    assert run(compiler, source, **{f"{BODY}__n": value}) is expected


@pytest.mark.parametrize(
    "source",
    [
        "ctx.request.http.bodyMap.n * 2.0 < 1.4",
        "ctx.request.http.bodyMap.n + 0.5 > 1.0",
    ],
)
def test_mixed_int_double_arithmetic_is_an_eval_error(compiler: Compiler, source: str) -> None:
    with pytest.raises(CelEvalError, match="No matching overloads"):
        run(compiler, source, **{f"{BODY}__n": 1})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('ctx.user.spec.groups.hasAll("dev")', True),
        ('ctx.user.spec.groups.hasAll("ops", "dev")', True),
        ('ctx.user.spec.groups.hasAll("dev", "ops", "qa")', True),
        ('ctx.user.spec.groups.hasAll("admin")', False),
        ('ctx.user.spec.groups.hasAll("dev", "admin")', False),
        ('ctx.user.spec.groups.hasAll("dev", "ops", "admin")', False),
        ('ctx.user.spec.groups.hasAny("admin")', False),
        ('ctx.user.spec.groups.hasAny("admin", "qa")', True),
        ('ctx.user.spec.groups.hasAny("a", "b", "ops")', True),
        ('ctx.user.spec.groups.hasAny("a", "b", "c")', False),
        ('ctx.user.spec.groups.hasAll("dev", "dev", "dev", "dev", "dev", "dev", "dev", "ops")', True),
        ('ctx.user.spec.groups.hasAny(ctx.user.metadata.name, "qa")', True),
        ('[].hasAny("dev")', False),
        ("[1, 2, 3].hasAll(1, 3)", True),
        ("[1, 2, 3].hasAll(1.0, 3u)", True),
        ("[1, 2, 3].hasAny(true)", False),
        ("[true, false].hasAll(true)", True),
        ('[1, "a", null].hasAll(null, "a")', True),
        ("[[1, 2], [3]].hasAny([3])", True),
        ("[[1, 2], [3]].hasAny([true])", False),
        ('[{"a": 1}].hasAll({"a": 1.0})', True),
    ],
)
def test_has_all_has_any(compiler: Compiler, source: str, expected: bool) -> None:
    assert run(compiler, source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # calls in every place the rewrite to sets.contains/sets.intersects must reach
        ('ctx.user.spec.groups.hasAll("dev") && ctx.user.spec.groups.hasAny("qa")', True),
        ('[["dev"], ["ops"]].all(g, ctx.user.spec.groups.hasAll(g[0]))', True),
        ('[["dev"], ["x"]].exists(g, ctx.user.spec.groups.hasAny(g[0]))', True),
        ("[[true]].hasAny([[1, 2]].hasAll([1, 2.0]) == false, [true])", True),
        ('{"k": [1, 2].hasAll(2)}.k', True),
        ('ctx.user.spec.groups.filter(g, [g].hasAny("dev", "ops")) == ["dev", "ops"]', True),
        ('!(ctx.user.spec.groups.hasAll("nobody")) ? [1].hasAny(1) : false', True),
        ('sets.contains(ctx.user.spec.groups, ["qa"]) && !sets.intersects(["x"], ["y"])', True),
        ('"hasAll" == "hasAll" && ["hasAny("].hasAny("hasAny(")', True),
    ],
)
def test_has_all_has_any_anywhere_in_an_expression(compiler: Compiler, source: str, expected: bool) -> None:
    assert run(compiler, source) is expected


def test_has_all_argument_error_is_an_eval_error(compiler: Compiler) -> None:
    with pytest.raises(CelEvalError, match="nope"):
        run(compiler, 'ctx.user.spec.groups.hasAny("dev", ctx.nope)')


def test_has_all_keeps_its_static_type(compiler: Compiler) -> None:
    check('ctx.user.spec.groups.hasAll("dev")')
    with pytest.raises(CelCompileError, match="bool"):
        check('ctx.user.spec.groups.hasAll("dev") ? 1 : 2')


def test_has_all_accepts_up_to_eight_arguments(compiler: Compiler) -> None:
    nine = ", ".join(['"dev"'] * 9)
    with pytest.raises(CelCompileError, match="hasAll"):
        compiler.compile(f"ctx.user.spec.groups.hasAll({nine})")


def test_has_all_on_a_non_list_is_an_eval_error(compiler: Compiler) -> None:
    with pytest.raises(CelEvalError, match="hasAll"):
        run(compiler, 'ctx.user.metadata.name.hasAll("a")')


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("has(ctx.request.http.bodyMap.x)", False),
        ("has(ctx.request.http.bodyMap.model)", True),
        ("has(ctx.request.http.bodyMap.x) && ctx.request.http.bodyMap.x == 1", False),
        ("!has(ctx.request.http.bodyMap.x) || ctx.request.http.bodyMap.x == 1", True),
        ('"x" in ctx.request.http.bodyMap', False),
        ('"model" in ctx.request.http.bodyMap', True),
    ],
)
def test_has_on_missing_keys(compiler: Compiler, source: str, expected: bool) -> None:
    assert run(compiler, source) is expected


@pytest.mark.parametrize(
    "source",
    [
        "ctx.request.http.bodyMap.x == 1",
        "ctx.request.http.bodyMap.x.y",
        "ctx.nothing.here",
        'ctx.request.http.headers["x-missing"] == "a"',
        "ctx.request.http.bodyMap.messages[10].role == 'user'",
    ],
)
def test_missing_key_is_an_eval_error(compiler: Compiler, source: str) -> None:
    program = compiler.compile(source)
    activation = Activation(make_ctx())
    with pytest.raises(CelEvalError):
        program.evaluate(activation)
    with pytest.raises(CelEvalError):
        program.evaluate_bool(activation)


def test_missing_key_error_names_the_key(compiler: Compiler) -> None:
    with pytest.raises(CelEvalError, match='"x"'):
        run(compiler, "ctx.request.http.bodyMap.x == 1")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('ctx.request.http.path.startsWith("/v1/")', True),
        ('ctx.request.http.path.startsWith("/v2/")', False),
        ('ctx.request.http.path.endsWith("/completions")', True),
        ('ctx.request.http.path.contains("chat")', True),
        ('ctx.request.http.path.contains("embeddings")', False),
        ('ctx.request.http.path.matches("^/v1/(chat/)?completions$")', True),
        ('ctx.request.http.path.matches("^/v1/embeddings$")', False),
        ('ctx.user.spec.email.matches("@example\\\\.com$")', True),
        ('ctx.request.http.host.lowerAscii() == "openai.example.com"', True),
        ('ctx.request.http.path.split("/")[1] == "v1"', True),
        ('ctx.request.http.path.replace("v1", "v2") == "/v2/chat/completions"', True),
        ('"  a ".trim() == "a"', True),
        ("size(ctx.request.http.path) == 20", True),
        ("ctx.request.http.path.size() == 20", True),
        ("size(ctx.user.spec.groups) == 3", True),
        ("size(ctx.request.http.headers) == 1", True),
        ("size(ctx.request.http.body) == 24", True),
        ("size(ctx.request.http.query) == 0", True),
    ],
)
def test_string_functions_and_size(compiler: Compiler, source: str, expected: bool) -> None:
    assert run(compiler, source) is expected


def test_invalid_regex_is_an_eval_error(compiler: Compiler) -> None:
    with pytest.raises(CelEvalError, match="regular expression"):
        run(compiler, 'ctx.request.http.path.matches("[")')


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ("ctx.request.http.method ==", 1, 27),
        ("1 +", 1, 4),
        ("ctx.user &&\n  (", 2, 4),
        ("'unterminated", 1, 1),
        ("ctx.request.http.method = 'POST'", 1, 25),
    ],
)
def test_syntax_error_reports_position(compiler: Compiler, source: str, line: int, column: int) -> None:
    with pytest.raises(CelCompileError) as info:
        compiler.compile(source)
    error = info.value
    assert (error.line, error.column) == (line, column)
    assert error.expression == source
    assert "Syntax error" in error.message
    assert f"line {line}, column {column}" in str(error)


@pytest.mark.parametrize("source", ["", "   ", "ctx[", "ctx.a.b.c(" * 3])
def test_malformed_sources_raise_compile_errors(compiler: Compiler, source: str) -> None:
    with pytest.raises(CelCompileError):
        compiler.compile(source)


def test_over_length_source_is_a_compile_error(compiler: Compiler) -> None:
    source = "true" + " " * (MAX_EXPRESSION_LENGTH - 3)
    with pytest.raises(CelCompileError, match=f"{MAX_EXPRESSION_LENGTH + 1} characters.*{MAX_EXPRESSION_LENGTH}"):
        compiler.compile(source)
    with pytest.raises(CelCompileError):
        check(source)


def test_source_at_the_length_cap_compiles(compiler: Compiler) -> None:
    source = "true" + " " * (MAX_EXPRESSION_LENGTH - 4)
    assert compiler.compile(source).evaluate_bool(Activation(make_ctx())) is True


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('1 + "a"', "no matching overload"),
        ('"a" < 1', "no matching overload"),
        ("[true].exists(x, x == 1)", "no matching overload"),
        ("request.http.method == 'GET'", "undeclared reference to 'request"),
        ("ctx.user.isAdmin()", "undeclared reference to 'isAdmin'"),
    ],
)
def test_type_errors_between_literals_fail_at_compile_time(compiler: Compiler, source: str, fragment: str) -> None:
    with pytest.raises(CelCompileError, match=fragment) as info:
        compiler.compile(source)
    assert info.value.line == 1
    assert info.value.column is not None


@pytest.mark.parametrize(
    "source",
    [
        'ctx.request.http.bodyMap.max_tokens + "a"',
        "ctx.request.http.method < 1",
        "ctx.request.http.bodyMap.max_tokens.startsWith('1')",
        "ctx.request.http.bodyMap.max_tokens + 9223372036854775807 > 0",
    ],
)
def test_type_errors_on_ctx_values_fail_at_eval_time(compiler: Compiler, source: str) -> None:
    program = compiler.compile(source)
    with pytest.raises(CelEvalError):
        program.evaluate(Activation(make_ctx()))


@pytest.mark.parametrize(
    "source",
    [
        "ctx.request.http.method",
        "ctx.request.http.bodyMap.max_tokens",
        "size(ctx.user.spec.groups)",
        "ctx.request.http.bodyMap",
        "null",
    ],
)
def test_evaluate_bool_rejects_non_bool_results(compiler: Compiler, source: str) -> None:
    with pytest.raises(CelEvalError, match="not bool"):
        run(compiler, source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ctx.request.http.method", "POST"),
        ("ctx.request.http.bodyMap.max_tokens", 100),
        ("ctx.request.http.bodyMap.temperature", 0.5),
        ("ctx.user.spec.groups", ["dev", "ops", "qa"]),
        ("ctx.session", {"metadata": {"name": "s-1"}, "spec": {"type": "CLIENT"}}),
        ("ctx.request.http.body", b'{"model": "gpt-4o-mini"}'),
        ("[b'a', {'k': b'b'}]", [b"a", {"k": b"b"}]),
        ("null", None),
        ("ctx.service.spec.isPublic", False),
        ("2 * 3", 6),
        ("18446744073709551615u", 2**64 - 1),
    ],
)
def test_evaluate_returns_plain_python_values(compiler: Compiler, source: str, expected: object) -> None:
    result = compiler.compile(source).evaluate(Activation(make_ctx()))
    assert result == expected
    assert type(result) is type(expected)


def test_evaluate_returns_timestamps_as_datetimes(compiler: Compiler) -> None:
    result = compiler.compile("timestamp(ctx.time)").evaluate(Activation(make_ctx()))
    assert isinstance(result, datetime.datetime)
    assert result.replace(tzinfo=datetime.UTC) == datetime.datetime(2026, 11, 27, 12, tzinfo=datetime.UTC)


def test_compiling_the_same_source_returns_the_same_program() -> None:
    compiler = Compiler()
    first = compiler.compile(SEED_ROUTE)
    assert compiler.compile(SEED_ROUTE) is first
    assert compiler.compile(SEED_ROUTE + " ") is not first
    assert len(compiler) == 2
    assert isinstance(first, Program)
    assert first.source == SEED_ROUTE


def test_cache_evicts_the_least_recently_used_program() -> None:
    compiler = Compiler(max_entries=2)
    a = compiler.compile("true")
    b = compiler.compile("false")
    assert compiler.compile("true") is a
    compiler.compile("1 == 1")
    assert len(compiler) == 2
    assert compiler.compile("true") is a
    assert compiler.compile("false") is not b


def test_cache_returns_one_program_across_threads() -> None:
    compiler = Compiler()
    with ThreadPoolExecutor(max_workers=8) as pool:
        programs = list(pool.map(lambda _: compiler.compile(SEED_GROUPS), range(64)))
    assert all(p is programs[0] for p in programs)


def test_compile_errors_are_not_cached() -> None:
    compiler = Compiler()
    for _ in range(2):
        with pytest.raises(CelCompileError):
            compiler.compile("ctx ==")
    assert len(compiler) == 0


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Compiler(max_entries=0)


def test_one_activation_serves_many_programs(compiler: Compiler) -> None:
    activation = Activation(make_ctx())
    sources = [SEED_GROUPS, SEED_MESSAGES, SEED_MODEL_IN, SEED_TEMPERATURE, SEED_ROUTE, SEED_METHOD_PATH]
    for _ in range(3):
        assert [compiler.compile(s).evaluate_bool(activation) for s in sources] == [True] * 6


def test_activation_is_reused_after_an_eval_error(compiler: Compiler) -> None:
    activation = Activation(make_ctx())
    with pytest.raises(CelEvalError):
        compiler.compile("ctx.missing").evaluate(activation)
    assert compiler.compile(SEED_ROUTE).evaluate_bool(activation) is True


def nested(depth: int, leaf: object, *, as_list: bool = False) -> object:
    node = leaf
    for _ in range(depth):
        node = [node] if as_list else {"n": node}
    return node


def levels(value: object) -> tuple[int, object]:
    """How deep a {"n": {"n": ...}} chain is, and its leaf (iterative: == would recurse)."""
    depth = 0
    while isinstance(value, dict):
        assert list(value) == ["n"]
        value, depth = value["n"], depth + 1
    return depth, value


@pytest.mark.parametrize("depth", [200, 1100])
def test_deeply_nested_body_does_not_crash(compiler: Compiler, depth: int) -> None:
    ctx = make_ctx(**{f"{BODY}__deep": nested(depth, "leaf"), f"{BODY}__deeplist": nested(depth, 1, as_list=True)})
    activation = Activation(ctx)
    assert compiler.compile("has(ctx.request.http.bodyMap.deep.n.n.n)").evaluate_bool(activation) is True
    assert compiler.compile("size(ctx.request.http.bodyMap.deeplist) == 1").evaluate_bool(activation) is True
    assert compiler.compile(SEED_ROUTE).evaluate_bool(activation) is True
    assert levels(compiler.compile("ctx.request.http.bodyMap.deep").evaluate(activation)) == (depth, "leaf")


def test_deep_expression_nesting_is_a_compile_error(compiler: Compiler) -> None:
    with pytest.raises(CelCompileError, match="recursion"):
        compiler.compile("ctx" + ".n" * 200)


@pytest.mark.parametrize("big", [2**64, 2**70, -(2**63) - 1, 10**400])
def test_integers_beyond_64_bits_become_doubles(compiler: Compiler, big: int) -> None:
    activation = Activation(make_ctx(**{f"{BODY}__seed": big}))
    assert compiler.compile(SEED_ROUTE).evaluate_bool(activation) is True
    assert compiler.compile("type(ctx.request.http.bodyMap.seed) == double").evaluate_bool(activation) is True


def test_tuples_and_bytearrays_are_accepted(compiler: Compiler) -> None:
    activation = Activation(
        make_ctx(**{f"{BODY}__pair": ("a", "b"), "request__http__body": bytearray(b"xy"), f"{BODY}__big": 2**65})
    )
    assert compiler.compile('ctx.request.http.bodyMap.pair == ["a", "b"]').evaluate_bool(activation) is True
    assert compiler.compile("ctx.request.http.body == b'xy'").evaluate_bool(activation) is True


@pytest.mark.parametrize(
    ("ctx", "fragment"),
    [
        ({}, "ctx"),
        ({"ctx": ["not", "a", "map"]}, "ctx"),
        (make_ctx(time=datetime.datetime(2026, 1, 1)), "datetime"),
        (make_ctx(**{f"{BODY}__s": {1, 2}}), "set"),
        (make_ctx(**{f"{BODY}__m": {None: 1}}), "map key"),
        (make_ctx(**{f"{BODY}__m": {2.5: 1}}), "map key"),
    ],
)
def test_activation_rejects_values_cel_cannot_hold(compiler: Compiler, ctx: dict[str, object], fragment: str) -> None:
    activation = Activation(ctx)
    program = compiler.compile("size(ctx) >= 0")  # reads all of ctx
    for _ in range(2):
        with pytest.raises(CelEvalError, match=fragment):
            program.evaluate_bool(activation)
    with pytest.raises(CelEvalError, match=fragment):
        program.evaluate(activation)


def test_a_value_cel_cannot_hold_fails_only_the_programs_that_read_it(compiler: Compiler) -> None:
    activation = Activation(make_ctx(**{f"{BODY}__s": {1, 2}}))
    assert compiler.compile("true").evaluate_bool(activation) is True
    assert compiler.compile(SEED_GROUPS).evaluate_bool(activation) is True
    assert compiler.compile(SEED_ROUTE).evaluate_bool(activation) is True  # bodyMap.model, not bodyMap.s
    with pytest.raises(CelEvalError, match="set"):
        compiler.compile("size(ctx.request.http.bodyMap) > 0").evaluate_bool(activation)


@pytest.mark.parametrize(
    ("source", "paths"),
    [
        ("true", {}),
        (SEED_ROUTE, {"request": {"http": {"bodyMap": {"model": None}}}}),
        (SEED_GROUPS, {"user": {"spec": {"groups": None}}}),
        (
            'has(ctx.request.http.headers.x) && ctx.request.http.headers.x == "1" && ctx.request.ip != ""',
            {"request": {"http": {"headers": {"x": None}}, "ip": None}},
        ),
        (
            "ctx.request.http.bodyMap.messages.all(m, m.role == 'user')",
            {"request": {"http": {"bodyMap": {"messages": None}}}},
        ),
        ("ctx.request.http.bodyMap['model'] == 'x'", {"request": {"http": {"bodyMap": None}}}),
        ("ctx.user.metadata.name == 'a' || ctx.user.metadata == {}", {"user": {"metadata": None}}),
        ("size(ctx) > 0", None),
        ("ctx['user'].metadata.name == 'alice'", None),
    ],
)
def test_a_program_knows_the_ctx_paths_it_reads(compiler: Compiler, source: str, paths: object) -> None:
    assert compiler.compile(source).paths == paths


@pytest.mark.parametrize(
    "source",
    [
        SEED_GROUPS,
        SEED_MESSAGES,
        SEED_MODEL_IN,
        SEED_TEMPERATURE,
        SEED_ROUTE,
        SEED_METHOD_PATH,
        "has(ctx.request.http.bodyMap.nope) || ctx.request.http.bodyMap.nope == 1",
        "ctx.request.http.bodyMap.messages.exists(m, m.content == 'hi') && ctx.time.startsWith('2026')",
        "ctx.session.spec.type == 'CLIENT' && !ctx.service.spec.isPublic && ctx.request.http.body.size() > 3",
        "ctx.user.missing.deeper == 1",
    ],
)
def test_the_parts_a_program_reads_decide_as_the_whole_ctx_does(compiler: Compiler, source: str) -> None:
    projected = compiler.compile(source)
    whole = Program(source, projected._expr)
    assert whole.paths is None and projected.paths is not None
    outcomes = []
    for program in (projected, whole):
        try:
            outcomes.append(program.evaluate(Activation(make_ctx())))
        except CelEvalError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_activation_leaves_ctx_unchanged(compiler: Compiler) -> None:
    ctx = make_ctx(**{f"{BODY}__seed": 2**70, f"{BODY}__pair": ("a",)})
    snapshot = copy.deepcopy(ctx)
    assert compiler.compile(SEED_ROUTE).evaluate_bool(Activation(ctx)) is True
    assert ctx == snapshot


@pytest.mark.parametrize(
    ("source", "expect_bool"),
    [
        (SEED_GROUPS, True),
        ("ctx.request.http.bodyMap.stream", True),
        ("1 + 2", False),
        ('"gpt-4o"', False),
        ("ctx.request.http.method", False),
    ],
)
def test_check_accepts_valid_sources(source: str, expect_bool: bool) -> None:
    check(source, expect_bool=expect_bool)


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ('ctx.user.spec.groups.hasAll("dev" "ops")', 1, 35),
        ("ctx.user.spec.groups.size() > 0 &&\n  ctx.b ||| ctx.c", 2, 11),
        ("ctx.request.http.method == 'GET' &&\nctx.request.http.path.startsWith(", 2, 34),
        ('1 + "a" == 2', 1, 3),
    ],
)
def test_check_reports_position(source: str, line: int, column: int) -> None:
    with pytest.raises(CelCompileError) as info:
        check(source)
    assert (info.value.line, info.value.column) == (line, column)


@pytest.mark.parametrize(("source", "kind"), [("1 + 2", "INT"), ('"gpt-4o"', "STRING"), ("[true]", "LIST")])
def test_check_rejects_conditions_that_cannot_be_bool(source: str, kind: str) -> None:
    with pytest.raises(CelCompileError, match=f"must be a bool.*{kind}") as info:
        check(source)
    assert info.value.line is None


def test_errors_share_one_base() -> None:
    assert issubclass(CelCompileError, CelError)
    assert issubclass(CelEvalError, CelError)
    assert not issubclass(CelEvalError, CelCompileError)


def test_a_conversion_is_checked_only_after_a_failure_and_once(
    compiler: Compiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe (an extra evaluation) stays off the common path: a conversion is checked when an evaluation
    on it fails, once; a failure of the expression itself leaves the conversion as it was."""
    from wardgate.cluster.policy import cel

    real = cel._engine()
    probes: list[object] = []

    class Probe:
        def eval(self, handle: object) -> Any:
            probes.append(handle)
            return real.probe.eval(handle)

    counting = cel._Engine(env=real.env, probe=Probe())  # type: ignore[arg-type]
    monkeypatch.setattr(cel, "_engine", lambda: counting)
    activation = Activation(make_ctx())
    assert compiler.compile(SEED_ROUTE).evaluate_bool(activation) is True
    assert probes == []
    missing = compiler.compile("ctx.request.http.bodyMap.nope == 1")
    for _ in range(3):
        with pytest.raises(CelEvalError, match="nope"):
            missing.evaluate_bool(activation)
    assert len(probes) == 1
    big = Activation(make_ctx(**{f"{BODY}__seed": 2**70}))
    program = compiler.compile("type(ctx.request.http.bodyMap.seed) == double")
    assert program.evaluate_bool(big) is True and program.evaluate_bool(big) is True
    # the engine refused the value: probed, converted value by value (probed twice more), then kept
    assert len(probes) == 4
