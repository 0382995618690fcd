"""Usage extraction for every format, JSON and streams (ResponseTap), and the estimate when none is reported."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wardgate.cluster.proxy.llm import ResponseTap
from wardgate.cluster.usage.extract import Usage, prompt_text, requested_output, usage_of


def _sse(*events: dict[str, Any], named: bool = False) -> bytes:
    out = b""
    for e in events:
        if named:
            out += f"event: {e.get('type', 'message')}\n".encode()
        out += b"data: " + json.dumps(e).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"


CASES = [
    (
        "chat",
        {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                   "prompt_tokens_details": {"cached_tokens": 4},
                   "completion_tokens_details": {"reasoning_tokens": 2}}},
        Usage(10, 5, 4, 2),
    ),
    (
        "responses",
        {"usage": {"input_tokens": 8, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 1},
                   "output_tokens_details": {"reasoning_tokens": 1}}},
        Usage(8, 3, 1, 1),
    ),
    ("embeddings", {"usage": {"prompt_tokens": 7, "total_tokens": 7}}, Usage(7, 0)),
    (
        "anthropic",
        {"usage": {"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": 20,
                   "cache_creation_input_tokens": 2}},
        Usage(27, 9, 20),
    ),
    (
        "gemini",
        {"usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 4, "cachedContentTokenCount": 2,
                           "thoughtsTokenCount": 3}},
        Usage(6, 7, 2, 3),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_json_answers(name: str, body: dict[str, Any], expected: Usage) -> None:
    assert usage_of(body) == expected
    tap = ResponseTap("application/json")
    tap.feed(json.dumps(body).encode())
    assert tap.reported() == expected


def test_openai_stream_usage_chunk_and_stripping() -> None:
    chunks = _sse(
        {"choices": [{"delta": {"content": "hi there"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    tap = ResponseTap("text/event-stream", strip_usage=True)
    sent = b"".join(tap.feed(chunks[i : i + 7]) for i in range(0, len(chunks), 7)) + tap.flush()
    assert tap.reported() == Usage(3, 2)
    assert b'"prompt_tokens"' not in sent and b"hi there" in sent and sent.endswith(b"data: [DONE]\n\n")


def test_responses_stream_reports_on_completed() -> None:
    stream = _sse(
        {"type": "response.output_text.delta", "delta": "Hello"},
        {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 1,
                                                               "output_tokens_details": {"reasoning_tokens": 0}}}},
        named=True,
    )  # fmt: skip
    tap = ResponseTap("text/event-stream")
    tap.feed(stream)
    assert tap.reported() == Usage(4, 1)


def test_anthropic_stream_merges_message_start_and_delta_even_far_apart() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}
    filler = [{"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 100}}] * 400
    end = {"type": "message_delta", "usage": {"output_tokens": 410}}
    tap = ResponseTap("text/event-stream")
    data = _sse(start, *filler, end, named=True)
    for i in range(0, len(data), 4096):
        tap.feed(data[i : i + 4096])
    assert tap.reported() == Usage(25, 410)


def test_gemini_stream_keeps_the_last_running_total() -> None:
    stream = _sse(
        {"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": {"promptTokenCount": 5,
                                                                                    "candidatesTokenCount": 1}},
        {"candidates": [{"content": {"parts": [{"text": "b"}]}}], "usageMetadata": {"promptTokenCount": 5,
                                                                                    "candidatesTokenCount": 6}},
    )  # fmt: skip
    tap = ResponseTap("text/event-stream")
    tap.feed(stream)
    assert tap.reported() == Usage(5, 6)


def test_a_stream_without_usage_leaves_its_text_for_the_estimate() -> None:
    tap = ResponseTap("text/event-stream")
    tap.feed(_sse({"choices": [{"delta": {"content": "one two"}}]}, {"choices": [{"delta": {"content": "three"}}]}))
    assert tap.reported() is None
    assert tap.produced() == b"one two three"


def test_prompt_text_and_requested_output_in_every_shape() -> None:
    assert prompt_text({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) == "hi"
    assert prompt_text({"contents": [{"parts": [{"text": "g"}]}], "system": "s"}) == "g\ns"
    assert prompt_text({"input": ["a", "b"]}) == "a\nb"
    assert requested_output({"max_tokens": 5}) == 5
    assert requested_output({"max_completion_tokens": 7, "max_tokens": 5}) == 7
    assert requested_output({"generationConfig": {"maxOutputTokens": 9}}) == 9
    assert requested_output({"max_tokens": True}) is None
