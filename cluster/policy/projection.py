"""Which parts of ctx a condition reads, so that only those are converted for its engine.

A condition compiled from CEL or Rego names ctx fields by static paths
(``ctx.request.http.bodyMap.model``, ``input.ctx.user.spec.groups``). At compile time
cel.py and rego.py collect those paths into a ``Paths`` tree; at request time
``project(ctx, paths)`` copies only the maps along them, so a rule that never names
``bodyMap`` never pays for converting a large body. A path ends where the expression
stops selecting fields by name (an index, a function call, a comparison, iteration);
below that end the value is kept whole, so the condition sees exactly what it would
see in the full ctx. ``None`` as a tree means "all of ctx".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeAlias

__all__ = ["ALL", "Paths", "add_path", "covers", "covers_by_key", "key", "project", "union"]

Paths: TypeAlias = "dict[str, Paths | None] | None"
"""Field name -> the paths below it (None: that field whole); None at the top: all of ctx."""

ALL: Paths = None
_MISSING = object()


def add_path(paths: dict[str, Paths | None], path: Iterable[str]) -> bool:
    """Add ``path`` (field names under ctx) to ``paths`` in place; False when the path is empty (all of ctx)."""
    fields = list(path)
    if not fields:
        return False
    node = paths
    for field in fields[:-1]:
        child = node.setdefault(field, {})
        if child is None:  # an ancestor is kept whole already
            return True
        node = child
    node[fields[-1]] = None
    return True


def union(trees: Iterable[Paths]) -> Paths:
    """One tree holding every path of ``trees`` (ALL when any of them is ALL)."""
    out: dict[str, Paths | None] = {}
    for tree in trees:
        if tree is None:
            return None
        _merge(out, tree)
    return out


def _merge(into: dict[str, Paths | None], tree: dict[str, Paths | None]) -> None:
    for name, child in tree.items():
        if name not in into:
            into[name] = None if child is None else _copy(child)
        elif into[name] is not None:
            if child is None:
                into[name] = None
            else:
                _merge(into[name], child)  # type: ignore[arg-type]


def _copy(tree: dict[str, Paths | None]) -> dict[str, Paths | None]:
    return {name: None if child is None else _copy(child) for name, child in tree.items()}


def covers(outer: Paths, inner: Paths) -> bool:
    """Whether the projection along ``outer`` holds everything the one along ``inner`` does: then a
    condition reading ``inner`` sees the same values in either (both are the full ctx on its paths)."""
    if outer is None:
        return True
    if inner is None:
        return False
    for name, child in inner.items():
        if name not in outer:
            return False
        mine = outer[name]
        if mine is not None and (child is None or not covers(mine, child)):
            return False
    return True


_COVERS: dict[tuple[object, object], bool] = {}
_COVERS_MAX = 4096


def covers_by_key(outer_key: object, outer: Paths, inner_key: object, inner: Paths) -> bool:
    """``covers``, remembered per pair of keys (a handful of projections meet on every request)."""
    pair = (outer_key, inner_key)
    known = _COVERS.get(pair)
    if known is None:
        if len(_COVERS) >= _COVERS_MAX:
            _COVERS.clear()
        known = _COVERS[pair] = covers(outer, inner)
    return known


def key(paths: Paths) -> object:
    """A hashable form of ``paths``, equal for equal trees: requests share one conversion per key. A string,
    whose hash Python keeps (a nested tuple's is recomputed on every lookup)."""
    if paths is None:
        return None
    return repr(_sorted(paths))


def _sorted(paths: dict[str, Paths | None]) -> tuple[object, ...]:
    return tuple(sorted((name, None if child is None else _sorted(child)) for name, child in paths.items()))


def project(value: Mapping[str, object], paths: Paths) -> Mapping[str, object]:
    """The maps of ``value`` along ``paths`` (missing fields stay missing); ``value`` itself for ALL."""
    if paths is None:
        return value
    out: dict[str, object] = {}
    get = value.get
    for name, child in paths.items():
        item = get(name, _MISSING)
        if item is _MISSING:
            continue
        if child is not None and (type(item) is dict or isinstance(item, Mapping)):  # per request: skip the ABC
            item = project(item, child)
        out[name] = item
    return out
