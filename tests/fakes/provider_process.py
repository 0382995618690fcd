"""The fake OpenAI-compatible provider as a process of its own (`python -m tests.fakes.openai_provider`): for
tests whose provider must not share the test's event loop, or that check how the process starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def fake_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`python -m tests.fakes.openai_provider --port 0 ARGS` and the base URL it says it listens on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_provider", "--port", "0", *args,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        found = re.fullmatch(r"fake-openai listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert found, line
        yield process, found[1]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
