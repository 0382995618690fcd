"""Parse YAML manifests (one or many documents per file) into resources, with errors that name the spot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from wardgate.cluster.resources.kinds import KINDS, AnyResource


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one document: where (`source`, document index, field path) and why."""

    source: str
    document: int
    field: str
    reason: str
    resource: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: document {self.document}"
        if self.resource:
            where += f" ({self.resource})"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.reason}"


class ManifestError(ValueError):
    """A manifest could not be parsed or validated; `problems` lists every issue found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_document(raw: object, source: str, index: int) -> AnyResource:
    """Validate one decoded document; raise ManifestError naming the document, field and reason."""
    if not isinstance(raw, dict):
        raise ManifestError([Problem(source, index, "", f"expected a mapping, got {type(raw).__name__}")])
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ManifestError([Problem(source, index, "kind", "missing (one of: " + ", ".join(KINDS) + ")")])
    cls = KINDS.get(kind)
    if cls is None:
        raise ManifestError([Problem(source, index, "kind", f"unknown kind {kind!r}")])
    doc: dict[str, Any] = {**raw}
    doc.setdefault("spec", {})
    metadata = raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    label = f"{kind}/{name}" if isinstance(name, str) else kind
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown field"
            problems.append(Problem(source, index, _field_path(err["loc"]), reason, label))
        raise ManifestError(problems) from None


MAX_DEPTH = 64
MAX_VALUES = 1_000_000
"""A manifest nested deeper, or holding more values (YAML aliases can multiply them), is refused whole."""


def parse_documents(text: str, source: str) -> list[tuple[int, object]]:
    """Decode YAML into (document number from 1, raw value) pairs, skipping empty documents."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([Problem(source, 1, "", f"invalid YAML at {where}: {problem}")]) from None
    except RecursionError:
        raise ManifestError([Problem(source, 1, "", f"nests deeper than {MAX_DEPTH} levels")]) from None
    found = [(i, d) for i, d in enumerate(docs, 1) if d is not None]
    for index, doc in found:
        problem = _shape_problem(doc)
        if problem is not None:
            raise ManifestError([Problem(source, index, "", problem)])
    return found


def _shape_problem(root: object) -> str | None:
    """Why a decoded document is too deep or too large to validate, else None (bounded by the caps)."""
    stack: list[tuple[object, int]] = [(root, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values"
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def parse_manifest(text: str, source: str = "<input>") -> list[AnyResource]:
    """Every resource in a YAML text. All documents are checked; the error lists every problem."""
    resources: list[AnyResource] = []
    problems: list[Problem] = []
    for index, raw in parse_documents(text, source):
        try:
            resources.append(validate_document(raw, source, index))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return resources
