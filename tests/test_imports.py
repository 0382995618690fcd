"""Every module imports on its own in a fresh interpreter with warnings as errors (aiohttp's idea), under the one
`wardgate` namespace, and nothing in the tree imports a folder by its bare name (a second copy of a module)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(
    "wardgate." + ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for package in ("agent", "cluster", "client")
    for p in (REPO / package).rglob("*.py")
    if p.name != "__main__.py"
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


BARE_IMPORT = re.compile(r"^\s*(from|import)\s+(agent|cluster|client)(\.|\s|$)", re.M)


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("agent", "cluster", "client", "tests", "bench", "vagrant", "scripts")
        for path in (REPO / folder).rglob("*.py")
        if BARE_IMPORT.search(path.read_text())
    ]
    assert offenders == []
