"""Token usage from provider answers, one normalised shape for every format; estimates when none is reported.

    OpenAI Chat Completions  usage{prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens,
                             completion_tokens_details.reasoning_tokens}; streams: the usage chunk at the end
    OpenAI Responses         usage{input_tokens, output_tokens, input_tokens_details.cached_tokens,
                             output_tokens_details.reasoning_tokens}; streams: `response.completed`
    OpenAI Embeddings        usage{prompt_tokens}
    Anthropic Messages       usage{input_tokens, output_tokens, cache_read_input_tokens,
                             cache_creation_input_tokens}; streams: `message_start` (input), `message_delta`
                             (output so far, cumulative)
    Gemini generateContent   usageMetadata{promptTokenCount, candidatesTokenCount, cachedContentTokenCount,
                             thoughtsTokenCount}; streams: every chunk, cumulative

`input` counts every prompt token (cached ones included, as OpenAI does; Anthropic reports them apart);
`output` every generated token (reasoning included; Gemini reports thoughts apart). Several usage objects
of one stream merge field by field (the largest wins: every format reports running totals).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call; `estimated` when the provider reported none and the gateway counted."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.input + self.output

    def merge(self, other: Usage) -> Usage:
        return Usage(
            max(self.input, other.input),
            max(self.output, other.output),
            max(self.cached, other.cached),
            max(self.reasoning, other.reasoning),
            self.estimated and other.estimated,
        )

    def as_record(self) -> dict[str, Any]:
        """The access log's `usage` (OpenAI's names, so dashboards read every provider alike)."""
        out: dict[str, Any] = {
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.total,
        }
        if self.cached:
            out["cached_tokens"] = self.cached
        if self.reasoning:
            out["reasoning_tokens"] = self.reasoning
        return out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _detail(usage: Mapping[str, Any], name: str, key: str) -> int:
    details = usage.get(name)
    return _int(details.get(key)) if isinstance(details, dict) else 0


def _from_usage(usage: Mapping[str, Any]) -> Usage | None:
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # Chat Completions, Embeddings
        return Usage(
            _int(usage.get("prompt_tokens")),
            _int(usage.get("completion_tokens")),
            _detail(usage, "prompt_tokens_details", "cached_tokens"),
            _detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    if "input_tokens" in usage or "output_tokens" in usage:
        if "input_tokens_details" in usage or "output_tokens_details" in usage:  # Responses
            return Usage(
                _int(usage.get("input_tokens")),
                _int(usage.get("output_tokens")),
                _detail(usage, "input_tokens_details", "cached_tokens"),
                _detail(usage, "output_tokens_details", "reasoning_tokens"),
            )
        read = _int(usage.get("cache_read_input_tokens"))  # Anthropic: cache tokens are not in input_tokens
        written = _int(usage.get("cache_creation_input_tokens"))
        return Usage(_int(usage.get("input_tokens")) + read + written, _int(usage.get("output_tokens")), read)
    return None


def _from_gemini(meta: Mapping[str, Any]) -> Usage:
    thoughts = _int(meta.get("thoughtsTokenCount"))
    return Usage(
        _int(meta.get("promptTokenCount")),
        _int(meta.get("candidatesTokenCount")) + thoughts,
        _int(meta.get("cachedContentTokenCount")),
        thoughts,
    )


def usage_of(value: object) -> Usage | None:
    """The usage one JSON answer (or one stream event) reports, in any of the formats above; None if none."""
    if not isinstance(value, dict):
        return None
    meta = value.get("usageMetadata")
    if isinstance(meta, dict):
        return _from_gemini(meta)
    usage = value.get("usage")
    if not isinstance(usage, dict):
        inner = value.get("response") or value.get("message")  # Responses stream / Anthropic message_start
        usage = inner.get("usage") if isinstance(inner, dict) else None
    return _from_usage(usage) if isinstance(usage, dict) else None


def merge(found: Usage | None, more: Usage | None) -> Usage | None:
    if found is None:
        return more
    return found if more is None else found.merge(more)


_TEXT_FIELDS = re.compile(rb'"(?:content|text|delta|output_text|partial_json|arguments)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def produced_text(data: bytes) -> bytes:
    """The generated text in an answer or stream bytes (every string of a content/text/delta field): what an
    estimate counts when the provider reports no usage, or the client left before it did."""
    return b" ".join(_TEXT_FIELDS.findall(data))


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text of a request's prompt in any of the formats above (messages, input, prompt, contents,
    system, instructions), for the estimate made before the call."""
    parts: list[str] = []
    _collect(
        [body.get(k) for k in ("messages", "input", "prompt", "contents", "system", "instructions")],
        parts,
        0,
    )
    return "\n".join(parts)


def _collect(value: object, parts: list[str], depth: int) -> None:
    if depth > 12:
        return
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, parts, depth + 1)
    elif isinstance(value, dict):
        for key in ("content", "text", "parts", "input"):
            if key in value:
                _collect(value[key], parts, depth + 1)


def requested_output(body: Mapping[str, Any]) -> int | None:
    """The output cap the client asked for (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    Gemini's `generationConfig.maxOutputTokens`), None when it set none."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    config = body.get("generationConfig")
    if isinstance(config, dict):
        value = config.get("maxOutputTokens")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
