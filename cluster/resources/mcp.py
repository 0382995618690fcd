"""The MCP servers of an MCP Service that joins several into one (`upstream.mcpServers`): each server's name,
tool-name prefix and URL, and the checks that keep every prefixed name pointing at one server."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from wardgate.cluster.resources.meta import Model, Name
from wardgate.cluster.resources.types import UpstreamUrl

McpPrefix = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")]


class McpServer(Model):
    """One MCP server of an MCP Service that has several: its tools and prompts are listed and called with
    `prefix` before their names (`gh_` + `search` = `gh_search`); `url` is its Streamable HTTP endpoint."""

    name: Name
    prefix: McpPrefix
    url: UpstreamUrl


def check_mcp_servers(servers: Sequence[McpServer]) -> None:
    """Names and prefixes are unique, and no prefix starts another (`gh` and `gh_` could both own `gh_x`)."""
    for field in ("name", "prefix"):
        values = [getattr(m, field) for m in servers]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ValueError(f"mcpServers: each {field} must be unique, repeated: {', '.join(dup)}")
    prefixes = sorted(m.prefix for m in servers)
    for a, b in itertools.pairwise(prefixes):
        if b.startswith(a):
            raise ValueError(f"mcpServers prefix {a!r} is a prefix of {b!r}: a name could belong to both")
