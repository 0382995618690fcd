"""The lab's systemd mode (`make lab-systemd`): each machine a Debian bookworm container that boots systemd
(systemd-nspawn) inside the machine's network namespace, with the repository at /vagrant. The provisioning
scripts then run as Vagrant runs them: WARDGATE_REPO=/vagrant, the VM's own paths, systemd units, and
Wardgate installed from its packages in dist/ (WARDGATE_INSTALL=package): the .deb on the cluster, the client
wheel with pipx on the client.

What a VM has and a container does not: its own kernel, NFS (a bind mount stands in for the synced folder),
and here the internet. The image is debootstrapped once into .lab/images/ (`make clean` removes it). Before
every lab, with the host's network, the image gets what a machine on the internet would fetch while it is
provisioned: the lab's own tools (the fake provider, workload.py's SDKs) from the repository, apt's cache of
what installing the packages needs, and a folder of the wheels the client's pipx install needs, which pip on
the machines uses through /etc/pip.conf. Inside the namespaces there is no network but the lab's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / ".lab" / "images" / "debian-bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# About what a Vagrant box brings; the install step adds the rest (make, python3-venv, wireguard-go, ...).
BASE_PACKAGES = "systemd,systemd-sysv,dbus,python3,ca-certificates,iproute2,procps,sudo"
GUEST_REPO = "/vagrant"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAB_TOOLS_VENV = "/opt/wardgate-lab/venv"  # provision/common.sh's default: the lab's tools, not Wardgate
WHEELS = "/var/cache/wardgate-lab/wheels"  # in the image: the package index's wheels the machines' pip may use
POWEROFF = signal.SIGRTMIN + 3  # what systemd as a container's init takes for "power off"
_started: dict[str, subprocess.Popen[bytes]] = {}  # this process's systemd-nspawn children, to reap them


class ContainerError(Exception):
    pass


def _run(command: Sequence[str], what: str, timeout: float) -> None:
    print(f"lab: {what}", flush=True)
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ContainerError(f"{what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")


def prepare_image() -> Path:
    """The Debian image with Wardgate installed by the provisioning scripts' own install step."""
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise ContainerError(f"missing {missing}: `make lab-systemd` installs debootstrap and systemd-container")
    if not (IMAGE / "etc" / "os-release").exists():
        partial = IMAGE.with_name(IMAGE.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(partial), MIRROR]
        _run(command, f"debootstrap bookworm into {IMAGE.relative_to(REPO)} (once)", timeout=1800)
        partial.rename(IMAGE)
    deb, wheel = (_one_package(pattern) for pattern in ("wardgate-node_*.deb", "wardgate-*-py3-none-any.whl"))
    # pip and apt inside reach the registries the way this host does, through whatever CA it trusts
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", IMAGE / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    prepare = f"""set -e
        export PIP_CONFIG_FILE=/dev/null  # this step uses the package index; /etc/pip.conf is for the machines
        . {GUEST_REPO}/vagrant/provision/common.sh
        install_wardgate
        apt-get update -qq
        apt-get install -y -qq --download-only pipx postgresql-15 {GUEST_REPO}/dist/{deb}
        {LAB_TOOLS_VENV}/bin/pip download -q --disable-pip-version-check --dest {WHEELS} \
          {GUEST_REPO}/dist/{wheel} pip setuptools wheel
        printf '[global]\\nno-index = true\\nfind-links = {WHEELS}\\n' > /etc/pip.conf
    """
    command = [
        "systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(IMAGE), f"--bind={REPO}:{GUEST_REPO}",
        "env", "-i", f"PATH={GUEST_PATH}", "HOME=/root", f"WARDGATE_REPO={GUEST_REPO}", "MACHINE=image",
        "WARDGATE_INSTALL=package", "DEBIAN_FRONTEND=noninteractive", "bash", "-c", prepare,
    ]  # fmt: skip
    _run(command, "the image: the lab's tools, apt's cache and the client's wheels (the host's network)", 1800)
    return IMAGE


def _one_package(pattern: str) -> str:
    found = sorted((REPO / "dist").glob(pattern))
    if len(found) != 1:
        raise ContainerError(f"want one dist/{pattern}, found {[p.name for p in found]}: run `make dist` first")
    return found[0].name


def boot(root: Path, netns: str, hostname: str, share: Path, console: Path) -> None:
    """Copy the image to ROOT and boot it in NETNS; returns once systemd says the system is up."""
    _run(["cp", "-a", "--reflink=auto", str(IMAGE), str(root)], f"copy the image for {hostname}", timeout=600)
    (root / "etc" / "hostname").write_text(hostname + "\n")
    (REPO / "vagrant" / ".share").mkdir(exist_ok=True)  # where the lab's share is mounted, as Vagrant's is
    share.mkdir(parents=True, exist_ok=True)
    command = [
        "systemd-nspawn", "-q", "--boot", "--register=no", "--keep-unit", "-D", str(root), f"--machine={netns}",
        f"--network-namespace-path=/var/run/netns/{netns}", "--capability=CAP_NET_ADMIN", "--bind=/dev/net/tun",
        f"--bind={REPO}:{GUEST_REPO}", f"--bind={share}:{GUEST_REPO}/vagrant/.share",
    ]  # fmt: skip
    with console.open("ab") as log:
        _started[netns] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 90
    state = "not started"
    while time.monotonic() < deadline:
        init = container_init(netns)
        if init is not None:
            result = subprocess.run(
                [*enter(netns, {}), "systemctl", "is-system-running"], capture_output=True, text=True, timeout=30
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                print(f"lab: {hostname} booted (systemd: {state}) in {netns}", flush=True)
                return
        time.sleep(0.5)
    raise ContainerError(f"{hostname} did not boot within 90 s (systemd: {state}); console in {console}")


def container_init(netns: str) -> int | None:
    """The host pid of the container's systemd: the process in NETNS whose parent is systemd-nspawn."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    for pid in result.stdout.split():
        with suppress(OSError, ValueError):
            if Path(f"/proc/{_parent(int(pid))}/comm").read_text().strip() == "systemd-nspawn":
                return int(pid)
    return None


def enter(netns: str, env: dict[str, str]) -> list[str]:
    """The command prefix that runs a program inside the container booted in NETNS, with only ENV."""
    init = container_init(netns)
    if init is None:
        raise ContainerError(f"no container runs in {netns}")
    return ["nsenter", "-t", str(init), "-a", "env", "-i", *(f"{k}={v}" for k, v in env.items())]


def power_off(netns: str, grace: float = 30.0) -> None:
    """Ask the container's systemd to power off (the units stop the way they stop on a VM); kill it if it hangs."""
    init = container_init(netns)
    if init is None:
        return
    nspawn = _parent(init)
    with suppress(ProcessLookupError):
        os.kill(init, POWEROFF)
    deadline = time.monotonic() + grace
    while _running(nspawn) and time.monotonic() < deadline:
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.kill(nspawn, signal.SIGKILL)
    started = _started.pop(netns, None)
    if started is not None:
        started.wait(10)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child of ours that exited stays in /proc until it is reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
