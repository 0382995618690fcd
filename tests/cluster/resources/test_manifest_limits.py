"""Hostile manifests are refused whole with a clear problem, never a crash: too deep, or too many values."""

from __future__ import annotations

import pytest

from wardgate.cluster.resources.manifest import ManifestError, parse_manifest

LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['x'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg", strict=True)
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kind: Service\nmetadata: {name: x}\nspec: " + "[" * 100_000 + "]" * 100_000, "nests deeper than 64"),
        ("kind: Service\nmetadata: {name: x}\nspec: " + "[" * 70 + "]" * 70, "nests deeper than 64"),
        ('{"kind": "Service", "spec": ' + "{" * 90_000 + "}" * 90_000 + "}", "nests deeper than 64"),
        (LAUGHS + "kind: Service\nmetadata: {name: x}\nspec: {}\n", "more than 1000000 values"),
    ],
)
def test_hostile_manifests_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "hostile.yaml")
    assert problem in str(caught.value.problems[0])
