"""MCP servers for the gateway's MCP tests: tests/fakes/mcp_server.py run as a real process on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO


@dataclass
class McpServer:
    url: str
    seen: Path

    def authorizations(self) -> list[str]:
        return self.seen.read_text().splitlines() if self.seen.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def mcp_server(tmp: Path, mode: str, *args: str) -> AsyncIterator[McpServer]:
    """`python -m tests.fakes.mcp_server PORT MODE [ARGS]` until the block ends."""
    port, seen = free_port(), tmp / f"seen-{mode}-{'-'.join(args)}.txt"
    env = {**os.environ, "WARDGATE_MCP_SEEN": str(seen)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.mcp_server", str(port), mode, *args, cwd=REPO, env=env
    )
    try:
        deadline = asyncio.get_running_loop().time() + 60  # a loaded CI machine starts Python slowly
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"the MCP server did not start (exit status {proc.returncode})") from None
                await asyncio.sleep(0.05)
        yield McpServer(f"http://127.0.0.1:{port}/mcp", seen)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
