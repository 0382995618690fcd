"""Builds the node's Debian package, wardgate-node_<version>_<arch>.deb, from the two wheels:

    python scripts/build_deb.py [--dist dist]     (after scripts/build_dist.py --out dist)

The package carries a wheelhouse (wardgate, wardgate-node and every dependency as a binary wheel for this
machine's architecture and Debian's /usr/bin/python3, fetched from the package index with `pip download`)
in /opt/wardgate; its postinst makes /opt/wardgate/venv from it with `--no-index`, so installing needs no
network. Before packing, the same resolution is tried here with the same interpreter (`pip install --dry-run
--no-index`): a wheelhouse that lacks a dependency fails the build, not the installation. Build on the Debian
release you install on (Debian 12: Python 3.11). The rest comes from packaging/debian/: control, the
maintainer scripts, the systemd units and the settings in /etc/wardgate (conffiles). `dpkg-deb
--root-owner-group` packs it, so no root is needed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "packaging" / "debian"
PACKAGE = "wardgate-node"
COMMANDS = ("wardgate-cluster", "wardgate-agent", "wardgatectl", "wardgate")
CONFFILES = {"wardgate.env": "etc/wardgate/wardgate.env", "agent.toml": "etc/wardgate/agent.toml"}
UNITS = ("wardgate-cluster.service", "wardgate-agent.service")
SCRIPTS = ("postinst", "prerm", "postrm")
# The interpreter the package runs on (postinst: /usr/bin/python3 -m venv): the wheelhouse is resolved for it.
TARGET_PYTHON = "/usr/bin/python3"


class BuildError(Exception):
    pass


def _run(command: list[str], what: str, timeout: float = 900) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise BuildError(f"{what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def maintainer() -> str:
    """DEB_MAINTAINER, else git's user.name and user.email, else the author of the commit being packaged."""
    if os.environ.get("DEB_MAINTAINER"):
        return os.environ["DEB_MAINTAINER"]
    git = ["git", "-C", str(REPO)]
    name = subprocess.run([*git, "config", "user.name"], capture_output=True, text=True).stdout.strip()
    email = subprocess.run([*git, "config", "user.email"], capture_output=True, text=True).stdout.strip()
    if name and email:
        return f"{name} <{email}>"
    return _run([*git, "log", "-1", "--format=%an <%ae>"], "git log (for the Maintainer field)").strip()


def our_wheels(dist: Path, version: str) -> tuple[Path, Path]:
    client = dist / f"wardgate-{version}-py3-none-any.whl"
    node = dist / f"wardgate_node-{version}-py3-none-any.whl"
    missing = [str(w) for w in (client, node) if not w.is_file()]
    if missing:
        raise BuildError(f"missing {missing}: build them first (scripts/build_dist.py, `make wheels`)")
    return client, node


def fill_wheelhouse(wheelhouse: Path, client: Path, node: Path, python: str) -> None:
    """Our two wheels, and binary wheels of every dependency from the package index (pip's cache helps),
    resolved by PYTHON, the interpreter postinst uses: environment markers differ between patch releases
    (redis needs async-timeout before 3.11.3; Debian 12 has 3.11.2)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["node"]]
    wheelhouse.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="wardgate-target-") as tmp:
        _run([python, "-m", "venv", tmp], f"{python} -m venv (Debian: apt-get install python3-venv)")
        pip = [f"{tmp}/bin/python", "-m", "pip", "--disable-pip-version-check"]
        # Our own names are never looked up on the index (someone else's `wardgate` there must not win).
        _run([*pip, "download", "--only-binary=:all:", "--dest", str(wheelhouse), *requirements],
             "pip download of the node's dependencies")  # fmt: skip
        for wheel in (client, node):
            shutil.copy2(wheel, wheelhouse / wheel.name)
        version = node.name.split("-")[1]
        _run([*pip, "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(wheelhouse),
              f"wardgate-node=={version}"], "resolving wardgate-node from the wheelhouse alone")  # fmt: skip


def architecture() -> str:
    return _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()


def _installed_size_kib(root: Path) -> int:
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return max(1, (total + 1023) // 1024)


def stage(root: Path, version: str, client: Path, node: Path, python: str) -> None:
    fill_wheelhouse(root / "opt" / "wardgate" / "wheelhouse", client, node, python)
    units = root / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copyfile(DEBIAN / unit, units / unit)
    for source, target in CONFFILES.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEBIAN / source, root / target)
    bin_dir = root / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    for command in COMMANDS:  # dangling until postinst has made the virtual environment
        (bin_dir / command).symlink_to(f"/opt/wardgate/venv/bin/{command}")
    doc = root / "usr" / "share" / "doc" / PACKAGE
    doc.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "copyright", doc / "copyright")
    shutil.copyfile(DEBIAN / "README.Debian", doc / "README.Debian")
    overrides = root / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "lintian-overrides", overrides / PACKAGE)
    packager = maintainer()
    changelog = (
        f"{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built from the wardgate repository.\n\n"
        f" -- {packager}  {formatdate(usegmt=False, localtime=False)}\n"
    )
    (doc / "changelog.gz").write_bytes(gzip.compress(changelog.encode(), mtime=0))
    control = root / "DEBIAN"
    control.mkdir()
    fields = {
        "@VERSION@": version,
        "@ARCH@": architecture(),
        "@MAINTAINER@": packager,
        "@INSTALLED_SIZE@": str(_installed_size_kib(root)),
    }
    text = (DEBIAN / "control").read_text()
    for key, value in fields.items():
        text = text.replace(key, value)
    (control / "control").write_text(text)
    (control / "conffiles").write_text("".join(f"/{target}\n" for target in CONFFILES.values()))
    for script in SCRIPTS:
        (control / script).write_text((DEBIAN / script).read_text().replace("@VERSION@", version))
    for path in root.rglob("*"):  # the builder's umask must not leak into the package
        if not path.is_symlink():
            executable = path.is_dir() or (path.parent == control and path.name in SCRIPTS)
            path.chmod(0o755 if executable else 0o644)


def build(dist: Path, python: str = TARGET_PYTHON) -> Path:
    version = _version()
    client, node = our_wheels(dist, version)
    with tempfile.TemporaryDirectory(prefix="wardgate-deb-") as tmp:
        root = Path(tmp) / "root"
        stage(root, version, client, node, python)
        target = dist / f"{PACKAGE}_{version}_{architecture()}.deb"
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(target)], "dpkg-deb --build")
    return target


def _version() -> str:
    namespace: dict[str, object] = {}
    exec((REPO / "wardgate" / "__init__.py").read_text(), namespace)
    return str(namespace["__version__"])


def main() -> int:
    parser = argparse.ArgumentParser(description="Build the wardgate-node Debian package")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the wheels are and the .deb goes")
    parser.add_argument("--python", default=TARGET_PYTHON, help="the target's python3 (default: %(default)s)")
    args = parser.parse_args()
    if shutil.which("dpkg-deb") is None:
        print("build_deb: dpkg-deb not found (Debian: apt-get install dpkg)", file=sys.stderr)
        return 1
    try:
        print(build(args.dist.resolve(), args.python))
    except BuildError as exc:
        print(f"build_deb: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
