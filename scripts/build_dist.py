"""Builds the two wheels of this one repository into a folder (default dist/):

    wardgate       the client: `wardgate` and `wardgatectl`; wardgate.client plus the two leaves it imports,
                   wardgate.agent.wg and wardgate.cluster.resources (and the __init__ of their parents);
                   requires only pyproject.toml's [project] dependencies
    wardgate-node  everything else: `wardgate-cluster` and `wardgate-agent`; requires wardgate==<the same
                   version> and the `node` extra's dependencies

No file is in both. Each distribution's files are copied (the wardgate/agent, /cluster and /client links
resolved into real files) into a staging folder beside a pyproject.toml generated from the repository's, and
`pip wheel --no-deps --no-build-isolation` builds it with this environment's setuptools: nothing is fetched.

    python scripts/build_dist.py [--out DIR]      prints the paths of the two wheels
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "wardgate"

# What the client distribution holds, relative to wardgate/: a folder ending in "/" takes everything under it.
CLIENT_FILES = (
    "__init__.py",
    "py.typed",
    "client/",
    "agent/__init__.py",
    "agent/py.typed",
    "agent/wg/",
    "cluster/__init__.py",
    "cluster/py.typed",
    "cluster/resources/",
)
CLIENT_SCRIPTS = ("wardgate", "wardgatectl")


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Distribution:
    name: str
    summary: str
    files: list[str]  # relative to the repository, under wardgate/
    dependencies: list[str]
    scripts: dict[str, str]


def is_client_file(relative: str) -> bool:
    return any(relative == entry or (entry.endswith("/") and relative.startswith(entry)) for entry in CLIENT_FILES)


def package_files() -> list[str]:
    """Every file of the `wardgate` package as a wheel would hold it (links followed, no bytecode)."""
    found = []
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                found.append(os.path.relpath(os.path.join(folder, name), REPO))
    return found


def distributions() -> tuple[Distribution, Distribution]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = version_of_tree()
    files = package_files()
    scripts: dict[str, str] = project["scripts"]
    inside = [f.removeprefix("wardgate/") for f in files]
    client = Distribution(
        name="wardgate",
        summary="Wardgate client: `wardgate` (connect to a Wardgate cluster) and `wardgatectl` (administer it)",
        files=[f for f, rel in zip(files, inside, strict=True) if is_client_file(rel)],
        dependencies=list(project["dependencies"]),
        scripts={name: target for name, target in scripts.items() if name in CLIENT_SCRIPTS},
    )
    node = Distribution(
        name="wardgate-node",
        summary="Wardgate node: `wardgate-cluster` (control plane and gateway) and `wardgate-agent` (WireGuard)",
        files=[f for f, rel in zip(files, inside, strict=True) if not is_client_file(rel)],
        dependencies=[f"wardgate=={version}", *project["optional-dependencies"]["node"]],
        scripts={name: target for name, target in scripts.items() if name not in CLIENT_SCRIPTS},
    )
    return client, node


def version_of_tree() -> str:
    namespace: dict[str, object] = {}
    exec((PACKAGE / "__init__.py").read_text(), namespace)
    version = namespace.get("__version__")
    if not isinstance(version, str):
        raise BuildError("wardgate/__init__.py defines no __version__ string")
    return version


def _packages(files: Iterable[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The import packages of FILES (folders holding a module) and, per package, its other files (package data)."""
    folders = {str(Path(f).parent) for f in files if f.endswith(".py")}
    data: dict[str, list[str]] = {}
    for f in files:
        if f.endswith(".py"):
            continue
        owner = Path(f).parent
        while str(owner) not in folders:
            if owner == owner.parent:
                raise BuildError(f"{f} lies in no package of this distribution")
            owner = owner.parent
        data.setdefault(str(owner).replace("/", "."), []).append(str(Path(f).relative_to(owner)))
    return sorted(p.replace("/", ".") for p in folders), data


def pyproject(dist: Distribution, version: str) -> str:
    packages, data = _packages(dist.files)
    # JSON strings and lists are valid TOML: no quoting rules of our own.
    lines = [
        "[build-system]",
        'requires = ["setuptools>=70.1"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {json.dumps(dist.name)}",
        f"version = {json.dumps(version)}",
        f"description = {json.dumps(dist.summary)}",
        'requires-python = ">=3.11"',
        'license = "Apache-2.0"',
        f"dependencies = {json.dumps(dist.dependencies)}",
        "",
        "[project.scripts]",
        *(f"{json.dumps(name)} = {json.dumps(target)}" for name, target in dist.scripts.items()),
        "",
        "[tool.setuptools]",
        f"packages = {json.dumps(packages)}",
        "include-package-data = false",
        "",
        "[tool.setuptools.package-data]",
        *(f"{json.dumps(package)} = {json.dumps(sorted(names))}" for package, names in sorted(data.items())),
    ]
    return "\n".join(lines) + "\n"


def build_wheel(dist: Distribution, version: str, out: Path, log: Callable[[str], None]) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"{dist.name}-") as tmp:
        stage = Path(tmp) / "src"
        for f in dist.files:
            target = stage / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / f, target)  # reads through the links: real files in the wheel
        (stage / "pyproject.toml").write_text(pyproject(dist, version))
        wheels = Path(tmp) / "wheels"
        command = [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--wheel-dir", str(wheels), str(stage),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise BuildError(f"pip wheel for {dist.name} failed:\n{(result.stdout + result.stderr)[-4000:]}")
        (built,) = wheels.glob("*.whl")
        out.mkdir(parents=True, exist_ok=True)
        target = out / built.name
        shutil.move(built, target)
    log(f"built {target} ({len(dist.files)} files, requires {len(dist.dependencies)})")
    return target


def build(out: Path, log: Callable[[str], None] = print) -> list[Path]:
    version = version_of_tree()
    client, node = distributions()
    shared = set(client.files) & set(node.files)
    if shared:  # cannot happen by construction; a wheel pair that overwrites each other must never be built
        raise BuildError(f"files in both distributions: {sorted(shared)}")
    return [build_wheel(dist, version, out, log) for dist in (client, node)]


def main() -> int:
    parser = argparse.ArgumentParser(description="Build the wardgate and wardgate-node wheels")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    args = parser.parse_args()
    try:
        for wheel in build(args.out.resolve(), log=lambda line: print(line, file=sys.stderr)):
            print(wheel)
    except BuildError as exc:
        print(f"build_dist: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
