"""`upstream.mcpServers`: several MCP servers behind one MCP Service, and what the model refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from wardgate.cluster.resources.service import Service


def _service(upstream: dict[str, Any], mode: str = "MCP", **config: Any) -> Service:
    return Service.model_validate(
        {
            "kind": "Service",
            "metadata": {"name": "tools"},
            "spec": {"mode": mode, "config": {"upstream": upstream, **config}},
        }
    )


GH = {"name": "github", "prefix": "gh_", "url": "https://mcp.github.example/mcp"}
DOCS = {"name": "docs", "prefix": "docs_", "url": "http://127.0.0.1:8931/mcp"}


def test_several_servers_each_an_endpoint() -> None:
    service = _service({"mcpServers": [GH, DOCS]})
    assert service.spec.config is not None
    assert service.spec.config.upstream.weighted_urls() == [(GH["url"], 1), (DOCS["url"], 1)]


@pytest.mark.parametrize(
    ("upstream", "mode", "config", "message"),
    [
        ({"url": "http://a/mcp", "mcpServers": [GH]}, "MCP", {}, "exactly one of url, endpoints and mcpServers"),
        ({"mcpServers": [GH, {**DOCS, "prefix": "gh_"}]}, "MCP", {}, "each prefix must be unique, repeated: gh_"),
        ({"mcpServers": [GH, {**DOCS, "name": "github"}]}, "MCP", {}, "each name must be unique, repeated: github"),
        ({"mcpServers": [GH, {**DOCS, "prefix": "gh_x_"}]}, "MCP", {}, "prefix 'gh_' is a prefix of 'gh_x_'"),
        ({"mcpServers": [{**GH, "prefix": "g h"}]}, "MCP", {}, "prefix"),
        ({"mcpServers": [{**GH, "url": "ftp://x/mcp"}]}, "MCP", {}, "url"),
        ({"mcpServers": [GH]}, "HTTP", {}, "upstream.mcpServers needs mode: MCP"),
        ({"mcpServers": [GH]}, "MCP", {"retry": {"attempts": 2}}, "takes no retry or fallbacks"),
    ],
)
def test_refused_shapes_name_the_field(
    upstream: dict[str, Any], mode: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _service(upstream, mode, **config)
