"""Root-only network tests: run them as root, or they skip loudly (and fail in CI, which runs as root)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.netns.lab import Lab

NOT_ROOT = (
    "NETNS TESTS DID NOT RUN: they need root (network namespaces, TUN devices, /var/run/wireguard). "
    "Run `sudo .venv/bin/pytest -m netns`."
)


@pytest.fixture(autouse=True)
def _root_or_loud_skip() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(NOT_ROOT + " CI must run them as root.")
        pytest.skip(NOT_ROOT)
    missing = [tool for tool in ("ip", "wireguard-go", "wg", "wg-quick") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: `make install` installs wireguard-go, wireguard-tools and iproute2")


@pytest_asyncio.fixture
async def lab() -> AsyncIterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        await made.cleanup()
        assert not made.leftovers(), made.leftovers()
