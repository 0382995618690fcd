"""A real MCP server (the official SDK's MCPServer over Streamable HTTP) for the gateway's MCP tests.

Run as a process: `python -m tests.fakes.mcp_server PORT [json|sse] [issues]`. Its tools `search_docs`,
`delete_doc` and `whoami`; `whoami` answers the Authorization header the server received (so a test can see
what the gateway sent upstream), and every request's Authorization header is appended to the file named by
`WARDGATE_MCP_SEEN` (one line per HTTP request, `-` when absent). With `issues`, a second, different server:
tools `search_issues` and `close_issue`, resource `issues://open`, prompt `triage` (several servers behind one
Service).
"""

from __future__ import annotations

import os
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import Receive, Scope, Send

server = MCPServer("fake-docs")


@server.tool()
def search_docs(query: str) -> str:
    """Search the documents."""
    return f"found: {query}"


@server.tool()
def delete_doc(name: str) -> str:
    """Delete a document."""
    return f"deleted: {name}"


@server.tool()
def whoami(ctx: Context) -> str:
    """The Authorization header this server received."""
    headers = ctx.headers or {}
    return headers.get("authorization", "-")


@server.resource("docs://readme")
def readme() -> str:
    return "read me"


@server.prompt()
def summarize(text: str) -> str:
    return f"Summarize: {text}"


issues = MCPServer("fake-issues")


@issues.tool()
def search_issues(query: str) -> str:
    """Search the issues."""
    return f"issues: {query}"


@issues.tool()
def close_issue(number: int) -> str:
    """Close an issue."""
    return f"closed: {number}"


@issues.resource("issues://open")
def open_issues() -> str:
    return "3 open"


@issues.prompt()
def triage(text: str) -> str:
    return f"Triage: {text}"


def main() -> None:
    port = int(sys.argv[1])
    json_response = len(sys.argv) > 2 and sys.argv[2] == "json"
    chosen = issues if len(sys.argv) > 3 and sys.argv[3] == "issues" else server
    app = chosen.streamable_http_app(json_response=json_response)
    seen = os.environ.get("WARDGATE_MCP_SEEN")

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if seen and scope["type"] == "http":
            headers = dict(scope["headers"])
            with open(seen, "a") as out:
                out.write(headers.get(b"authorization", b"-").decode() + "\n")
        await app(scope, receive, send)

    uvicorn.run(recording, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
