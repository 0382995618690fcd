"""The request the policy micro-benchmarks decide on: an OpenAI chat completion from alice, as `ctx` (the shape
CEL sees and Rego gets as `input.ctx`). Shared by bench/cel_engines.py and bench/policy_decision.py."""

from __future__ import annotations

import json
from typing import Any

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 0.5,
    "max_tokens": 256,
    "stream": True,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 4},
        {"role": "user", "content": "Summarise the following text. " + "lorem ipsum " * 60},
        {"role": "assistant", "content": "Here is a summary. " * 10},
    ],
}


def request_ctx(service: str, *, raw_body: bool) -> dict[str, Any]:
    """A fresh ctx for a request to SERVICE; with RAW_BODY also `request.http.body`, the bytes (as the gateway
    gives its policies; the engine comparison leaves them out, not every engine takes bytes)."""
    http: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": {},
        "headers": {
            "content-type": "application/json",
            "user-agent": "openai-python/1.60",
            "accept": "application/json",
        },
        "host": f"{service}.example.com",
        "scheme": "https",
        "bodyMap": BODY,
    }
    if raw_body:
        http["body"] = json.dumps(BODY).encode()
    return {
        "user": {
            "metadata": {"name": "alice"},
            "spec": {"type": "HUMAN", "groups": ["dev", "ops", "qa"], "email": "alice@example.com"},
        },
        "session": {"metadata": {"name": "s-1"}, "spec": {"type": "CLIENT"}},
        "service": {"metadata": {"name": service}, "spec": {"isPublic": False}},
        "request": {"http": http, "ip": "100.64.0.2"},
        "time": "2026-11-27T12:00:00Z",
    }
