"""The packages `make dist` builds (scripts/build_dist.py, scripts/build_deb.py): the client wheel carries only the
client and its dependencies, the two wheels share no file, the client installs into a clean virtual environment
from nothing but the .deb's wheelhouse and works, the node installs beside it the way the .deb's postinst does
it, and the .deb holds what a node needs (units, settings, wheelhouse, maintainer scripts) in a form dpkg and
lintian accept. Building the .deb fetches the dependencies' wheels from the package index (pip's cache helps)."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "packaging" / "debian"
TARGET_PYTHON = "/usr/bin/python3"  # scripts/build_deb.py's default
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "wardgate" / "__init__.py").read_text())[1]  # type: ignore[index]
# What the issue names as node-only, beside whatever the `node` extra lists: none may reach a user's laptop.
NODE_ONLY = {"regopy", "lupa", "grpcio", "xds-protos", "opentelemetry-proto", "asyncpg", "redis", "uvloop",
             "cel-expr-python", "quicktok-v1", "prometheus-client", "dnspython", "pyjwt", "orjson",
             "httptools"}  # fmt: skip


def canonical(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def tool(name: str, package: str) -> str:
    """NAME's path; a loud skip without it (`make test` installs PACKAGE), a failure in CI."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (`make test` installs {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass(frozen=True)
class Built:
    client: Path
    node: Path
    deb: Path
    wheelhouse: Path  # the .deb's /opt/wardgate/wheelhouse, unpacked
    root: Path  # the .deb's files, unpacked

    @staticmethod
    def names(wheel: Path) -> set[str]:
        with zipfile.ZipFile(wheel) as archive:
            return {n for n in archive.namelist() if ".dist-info/" not in n}

    @staticmethod
    def metadata(wheel: Path) -> email.message.Message:
        with zipfile.ZipFile(wheel) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tool("dpkg-deb", "dpkg")
    dist = tmp_path_factory.mktemp("dist")
    python = sys.executable
    wheels = subprocess.run(
        [python, "scripts/build_dist.py", "--out", str(dist)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert wheels.returncode == 0, wheels.stderr
    deb = subprocess.run(
        [python, "scripts/build_deb.py", "--dist", str(dist)], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert deb.returncode == 0, deb.stderr
    root = dist / "root"
    subprocess.run(["dpkg-deb", "-x", deb.stdout.strip(), str(root)], check=True, timeout=120)
    return Built(
        client=dist / f"wardgate-{VERSION}-py3-none-any.whl",
        node=dist / f"wardgate_node-{VERSION}-py3-none-any.whl",
        deb=Path(deb.stdout.strip()),
        wheelhouse=root / "opt" / "wardgate" / "wheelhouse",
        root=root,
    )


def tree_files(*entries: str) -> set[str]:
    """The files of the `wardgate` package at ENTRIES (relative to wardgate/), as a wheel names them."""
    found = set()
    for entry in entries:
        base = REPO / "wardgate" / entry
        if base.is_file():
            found.add(os.path.normpath(f"wardgate/{entry}"))
            continue
        for folder, dirs, files in os.walk(base, followlinks=True):  # agent/, cluster/, client/ are links
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found |= {os.path.relpath(os.path.join(folder, f), REPO) for f in files if not f.endswith(".pyc")}
    return found


def test_the_client_wheel_depends_on_nothing_of_the_node(built: Built) -> None:
    metadata = built.metadata(built.client)
    assert metadata["Name"] == "wardgate" and metadata["Version"] == VERSION
    requires = {canonical(r) for r in metadata.get_all("Requires-Dist") or []}
    assert requires == {canonical(r) for r in PROJECT["dependencies"]}
    node_extra = {canonical(r) for r in PROJECT["optional-dependencies"]["node"]}
    assert not requires & (NODE_ONLY | node_extra), f"node-side dependencies in the client: {requires & NODE_ONLY}"


def test_the_client_wheel_holds_the_client_and_the_two_leaves_it_imports_only(built: Built) -> None:
    expected = tree_files(
        "__init__.py", "py.typed", "client", "agent/__init__.py", "agent/py.typed", "agent/wg",
        "cluster/__init__.py", "cluster/py.typed", "cluster/resources",
    )  # fmt: skip
    assert built.names(built.client) == expected
    assert "wardgate/cluster/main.py" not in expected and "wardgate/agent/main.py" not in expected


def test_the_node_wheel_holds_the_rest_and_requires_the_same_client_version(built: Built) -> None:
    client, node = built.names(built.client), built.names(built.node)
    assert not client & node, f"in both wheels: {sorted(client & node)}"
    assert client | node == tree_files("."), "a file of the tree is in neither wheel"
    assert "wardgate/cluster/api/console_assets/console.css" in node  # package data, not only modules
    metadata = built.metadata(built.node)
    assert metadata["Name"] == "wardgate-node"
    requires = metadata.get_all("Requires-Dist") or []
    assert f"wardgate=={VERSION}" in requires
    assert {canonical(r) for r in requires} - {"wardgate"} == {
        canonical(r) for r in PROJECT["optional-dependencies"]["node"]
    }
    with zipfile.ZipFile(built.node) as archive:  # the links of the tree became real files
        assert archive.read("wardgate/cluster/main.py") == (REPO / "cluster" / "main.py").read_bytes()


def scripts_of(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(name).decode()
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    return {line.split("=")[0].strip() for line in section.splitlines() if "=" in line}


def test_each_wheel_installs_its_own_commands(built: Built) -> None:
    assert scripts_of(built.client) == {"wardgate", "wardgatectl"}
    assert scripts_of(built.node) == {"wardgate-cluster", "wardgate-agent"}


def run(*command: str | Path, timeout: float = 300) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_client_alone_works_in_a_clean_environment_and_the_node_joins_it(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # the interpreter the .deb's postinst uses and its wheelhouse is resolved for
    run(TARGET_PYTHON if Path(TARGET_PYTHON).exists() else sys.executable, "-m", "venv", venv)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--no-compile"]
    run(*pip, "--find-links", built.wheelhouse, built.client)
    installed = {canonical(line.split("==")[0]) for line in run(venv / "bin" / "python", "-m", "pip", "freeze").split()}
    assert not installed & NODE_ONLY, f"the client pulled in {installed & NODE_ONLY}"
    client_version = run(venv / "bin" / "wardgate", "--version").strip()
    assert client_version == f"wardgate {VERSION}"
    assert run(venv / "bin" / "wardgatectl", "--version").strip() == f"wardgatectl {VERSION}"
    assert "login" in run(venv / "bin" / "wardgate", "--help")
    assert "apply" in run(venv / "bin" / "wardgatectl", "--help")
    modules = sorted(
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in built.names(built.client)
        if n.endswith(".py") and not n.endswith("__main__.py")
    )
    run(venv / "bin" / "python", "-W", "error", "-c", "; ".join(f"import {m}" for m in modules))
    absent = subprocess.run([venv / "bin" / "python", "-c", "import wardgate.cluster.main"], capture_output=True)
    assert absent.returncode != 0, "the client environment can import the cluster"

    # what the .deb's postinst does, offline: the node from the wheelhouse alone, beside the same client
    run(*pip, "--find-links", built.wheelhouse, f"wardgate-node=={VERSION}", timeout=600)
    assert run(venv / "bin" / "wardgate-cluster", "--version").strip() == f"wardgate-cluster {VERSION}"
    assert run(venv / "bin" / "wardgate-agent", "--version").strip() == f"wardgate-agent {VERSION}"
    node_modules = sorted(
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in built.names(built.node)
        if n.endswith(".py") and not n.endswith("__main__.py")
    )
    run(venv / "bin" / "python", "-W", "error", "-c", "; ".join(f"import {m}" for m in node_modules))


def test_postinst_leaves_opentelemetry_proto_whole(built: Built, tmp_path: Path) -> None:
    """xds-protos ships an old opentelemetry/proto/ over opentelemetry-proto's (install order decides): the
    postinst step that reinstalls opentelemetry-proto must leave the message the cluster's exporter builds."""
    venv = tmp_path / "venv"
    run(TARGET_PYTHON if Path(TARGET_PYTHON).exists() else sys.executable, "-m", "venv", venv)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--no-compile"]
    wheels = {w.name.split("-")[0]: w for w in built.wheelhouse.glob("*.whl")}
    # the bad order on purpose: opentelemetry-proto first, xds-protos (and its stale copy) over it
    run(*pip, "--no-deps", wheels["opentelemetry_proto"])
    run(*pip, "--no-deps", wheels["xds_protos"])
    (common,) = venv.glob("lib/python3*/site-packages/opentelemetry/proto/common/v1/common_pb2.py")
    assert "InstrumentationScope" not in common.read_text(), "xds-protos no longer overwrites: drop the step"
    postinst = run("dpkg-deb", "-I", built.deb, "postinst")
    (step,) = re.findall(r"^  otel=.*\n(?:.*\\\n)*.*\n", postinst, re.M)
    script = step.replace('"$PREFIX/venv', f'"{venv}').replace('"$PREFIX/wheelhouse"', f'"{built.wheelhouse}"')
    run("sh", "-c", script)
    assert "InstrumentationScope" in common.read_text()


def test_the_deb_declares_a_node_and_installs_the_wheelhouse(built: Built) -> None:
    fields = run("dpkg-deb", "-f", built.deb)
    assert re.search(r"^Package: wardgate-node$", fields, re.M) and f"\nVersion: {VERSION}\n" in fields
    (depends,) = re.findall(r"^Depends: (.*)$", fields, re.M)
    for needed in ("python3-venv", "wireguard-go", "wireguard-tools", "iproute2", "libatomic1"):
        assert needed in [d.split()[0] for d in depends.split(", ")], f"Depends lacks {needed}: {depends}"
    wheels = {p.name for p in built.wheelhouse.glob("*.whl")}
    assert {built.client.name, built.node.name} <= wheels
    assert {"regopy", "lupa", "grpcio"} <= {w.split("-")[0].lower() for w in wheels}
    control = run("dpkg-deb", "-I", built.deb, "conffiles").split()
    assert control == ["/etc/wardgate/wardgate.env", "/etc/wardgate/agent.toml"]
    for command in ("wardgate-cluster", "wardgate-agent", "wardgatectl", "wardgate"):
        link = built.root / "usr" / "bin" / command
        assert os.readlink(link) == f"/opt/wardgate/venv/bin/{command}"
    postinst = run("dpkg-deb", "-I", built.deb, "postinst")
    assert f"VERSION={VERSION}\n" in postinst and "--no-index" in postinst


def unit(built: Built, name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (built.root / "lib" / "systemd" / "system" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_units_are_hardened_and_grant_only_what_each_needs(built: Built) -> None:
    cluster, agent = unit(built, "wardgate-cluster.service"), unit(built, "wardgate-agent.service")
    assert cluster["CapabilityBoundingSet"] == [""] and cluster["AmbientCapabilities"] == [""]
    assert int(cluster["LimitNOFILE"][0]) >= 65536
    # the agent: WireGuard (NET_ADMIN) and the private DNS on port 53 (NET_BIND_SERVICE), nothing else
    assert agent["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    assert agent["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    for settings in (cluster, agent):
        assert settings["User"] == ["wardgate"]
        assert settings["ProtectSystem"] == ["strict"] and settings["ReadWritePaths"] == ["/var/lib/wardgate"]
        assert settings["PrivateTmp"] == ["yes"] and settings["NoNewPrivileges"] == ["yes"]
        assert settings["EnvironmentFile"] == ["/etc/wardgate/wardgate.env"]
        assert settings["ExecStart"][0].startswith("/opt/wardgate/venv/bin/wardgate-")


def test_systemd_accepts_the_units(built: Built, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    # ExecStart's program exists once postinst has run: verify copies that point at a stand-in program
    program = tmp_path / "bin"
    program.mkdir()
    for command in ("wardgate-cluster", "wardgate-agent"):
        (program / command).write_text("#!/bin/sh\n")
        (program / command).chmod(0o755)
    units = []
    for name in ("wardgate-cluster.service", "wardgate-agent.service"):
        text = (built.root / "lib" / "systemd" / "system" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/wardgate/venv/bin/", f"{program}/"))
        units.append(str(tmp_path / name))
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    problems = [line for line in result.stderr.splitlines() if "wardgate-" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_lintian_finds_no_error(built: Built) -> None:
    lintian = tool("lintian", "lintian")
    result = subprocess.run(
        [lintian, "--fail-on", "error", str(built.deb)], capture_output=True, text=True, timeout=600
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert result.returncode == 0 and not errors, result.stdout + result.stderr


def test_the_maintainer_scripts_keep_data_on_remove_and_delete_it_on_purge() -> None:
    postrm = (DEBIAN / "postrm").read_text()
    remove = postrm.split("remove)", 1)[1].split(";;", 1)[0]
    purge = postrm.split("purge)", 1)[1].split(";;", 1)[0]
    assert "/var/lib/wardgate" not in remove and "/etc/wardgate" not in remove
    assert "/var/lib/wardgate" in purge and "/etc/wardgate" in purge
    for script in ("postinst", "prerm", "postrm"):
        checked = subprocess.run(["sh", "-n", str(DEBIAN / script)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{script}: {checked.stderr}"
