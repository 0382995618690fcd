"""The checked AST of a CEL expression: rewrite list.hasAll/hasAny, and find the ctx paths it reads.

cel.py compiles with the engine, hands the serialized CheckedExpr (a protobuf ``Any``)
here, and loads back the rewritten form when there is one. This module never imports
the engine; it reads and writes the cel.expr protobuf messages only.

    analyze(serialized) -> Analysis(rewritten: bytes | None, paths: Paths)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cel.expr import checked_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from wardgate.cluster.policy import projection
from wardgate.cluster.policy.projection import Paths

__all__ = ["SET_FUNCTIONS", "Analysis", "AstError", "analyze"]

SET_FUNCTIONS: Final = {
    "hasAll": ("sets.contains", "list_sets_contains_list"),
    "hasAny": ("sets.intersects", "list_sets_intersects_list"),
}
"""Member function -> the engine's native function and its overload id."""

_CTX: Final = "ctx"


class AstError(Exception):
    """The serialized expression cannot be read (not a CheckedExpr, or nested beyond protobuf's limit)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    rewritten: bytes | None
    """The serialized expression with hasAll/hasAny replaced, or None when it has neither."""
    paths: Paths
    """The ctx fields the expression reads (projection.ALL when it uses ctx other than by field names)."""


def _children(node: Any) -> list[Any]:
    kind = node.WhichOneof("expr_kind")
    if kind == "select_expr":
        return [node.select_expr.operand]
    if kind == "call_expr":
        call = node.call_expr
        return [*([call.target] if call.HasField("target") else []), *call.args]
    if kind == "list_expr":
        return list(node.list_expr.elements)
    if kind == "struct_expr":
        entries = node.struct_expr.entries
        return [*(e.map_key for e in entries if e.HasField("map_key")), *(e.value for e in entries)]
    if kind == "comprehension_expr":
        c = node.comprehension_expr
        return [c.iter_range, c.accu_init, c.loop_condition, c.loop_step, c.result]
    return []


def _ctx_path(node: Any) -> list[str] | None:
    """The field names of ``ctx.a.b...`` (``has()`` included), [] for ``ctx`` itself, else None."""
    fields: list[str] = []
    while node.WhichOneof("expr_kind") == "select_expr":
        fields.append(node.select_expr.field)
        node = node.select_expr.operand
    if node.WhichOneof("expr_kind") == "ident_expr" and node.ident_expr.name == _CTX:
        return fields[::-1]
    return None


def _rewrite_call(checked: Any, node: Any, next_id: int) -> bool:
    """``list.hasAll(a, ...)`` -> ``sets.contains(list, [a, ...])`` in place; the call keeps its id and type."""
    call = node.call_expr
    native = SET_FUNCTIONS.get(call.function) if call.HasField("target") else None
    if native is None:
        return False
    function, overload = native
    target, wanted = type(call.target)(), list(call.args)
    target.CopyFrom(call.target)
    call.ClearField("target")
    del call.args[:]
    call.function = function
    call.args.add().CopyFrom(target)
    items = call.args.add(id=next_id)
    items.list_expr.elements.extend(wanted)
    checked.type_map[next_id].list_type.elem_type.dyn.SetInParent()
    reference = checked.reference_map[node.id]
    reference.name = function
    del reference.overload_id[:]
    reference.overload_id.append(overload)
    return True


def analyze(serialized: bytes) -> Analysis:
    """Rewrite the set functions and collect the ctx paths of one serialized CheckedExpr."""
    packed = any_pb2.Any()
    checked = checked_pb2.CheckedExpr()
    try:
        packed.ParseFromString(serialized)
        if not packed.Unpack(checked):
            raise AstError(f"the engine serialized a {packed.type_url}, not a CheckedExpr")
    except DecodeError as exc:
        raise AstError(f"the expression is nested too deeply to analyze: {exc}") from exc
    next_id = max([0, *checked.type_map.keys(), *checked.reference_map.keys()]) + 1
    paths: dict[str, Paths | None] = {}
    reads_all = rewritten = False
    stack = [checked.expr]
    while stack:
        node = stack.pop()
        path = _ctx_path(node)
        if path is not None:
            reads_all = reads_all or not projection.add_path(paths, path)
            continue
        if node.WhichOneof("expr_kind") == "call_expr" and _rewrite_call(checked, node, next_id):
            next_id += 1
            rewritten = True
        stack.extend(_children(node))
    if rewritten:
        packed.Pack(checked)
    return Analysis(packed.SerializeToString() if rewritten else None, projection.ALL if reads_all else paths)
