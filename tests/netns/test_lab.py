"""`make lab`: the Vagrantfile's five machines as namespaces, provisioned by vagrant/provision/*.sh, the scenario
run against them, and nothing left behind afterwards, also when the run is interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns

STEPS = 7


def leftovers(name: str, tag: str) -> list[str]:
    found = [f"netns {n}" for n in os.listdir("/var/run/netns") if n.startswith(f"{name}-")]
    found += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if n.startswith(f"{name}-")]
    sockets = Path("/var/run/wireguard")
    found += [f"socket {s.name}" for s in sockets.glob(f"wg{tag}?.sock")] if sockets.exists() else []
    if (REPO / ".lab" / name).exists():
        found.append(f".lab/{name}")
    return found


def _tag(output: str) -> str:
    found = re.search(
        r"^lab: WireGuard interfaces wg(\w+)n \(cluster\), wg\1m \(cluster2\), wg\1c \(client\)$", output, re.M
    )
    assert found is not None, output[-5000:]
    return found[1]


def test_make_lab_runs_the_scenario_on_the_provisioned_machines() -> None:
    name = f"wglabt{os.getpid()}"
    started = time.monotonic()
    result = subprocess.run(
        ["make", "-s", "lab", f"LAB_RUN_NAME={name}"], capture_output=True, text=True, timeout=900, cwd=REPO
    )
    print(result.stdout[-6000:], f"\n`make lab` took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-15000:] + result.stderr[-3000:]
    for machine in ("cluster", "cluster2", "upstream", "client"):
        assert f"lab: {machine} provisioned in" in result.stdout
        # provisioned by the scripts, started the way a VM would start its units (here: their ExecStart lines)
        assert f"[{machine}] started wardgate-" in result.stdout
    assert "lab: db provisioned in" in result.stdout and "[db] started postgresql" in result.stdout
    assert "[cluster] wardgate-cluster init --store postgresql://" in result.stdout
    assert "[cluster2] wardgate-cluster join --store postgresql://" in result.stdout
    passes = re.findall(rf"^\[(\d)/{STEPS}\] PASS ", result.stdout, re.M)
    assert passes == [str(n) for n in range(1, STEPS + 1)], result.stdout[-6000:]
    # the client and the workload outlived the node the client used, and the lab said after how long
    killed = re.search(
        r"answered through the tunnel again after (\d+\.\d) s .* answered by lab-node2 in", result.stdout
    )
    assert killed is not None, result.stdout[-6000:]
    assert f"lab: {STEPS} of {STEPS} steps passed" in result.stdout and "lab: torn down" in result.stdout
    assert leftovers(name, _tag(result.stdout)) == []


def test_an_interrupted_lab_is_torn_down() -> None:
    name = f"wglabi{os.getpid()}"
    output = []
    with subprocess.Popen(
        [sys.executable, "-m", "vagrant.lab", "run", "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:  # interrupt once the cluster runs and the agent has made its interface
                output.append(line)
                if "lab: cluster provisioned in" in line:
                    break
            process.send_signal(signal.SIGINT)
            output.append(process.stdout.read())
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    text = "".join(output)
    assert code == 1, text[-5000:]
    assert "lab: interrupted" in text and "lab: torn down" in text, text[-5000:]
    assert "PASS" not in text
    assert leftovers(name, _tag(text)) == []


@pytest.mark.parametrize("command", ["run", "up"])
def test_a_lab_that_runs_already_is_neither_built_over_nor_torn_down(command: str) -> None:
    name = f"wglabx{os.getpid()}"
    subprocess.run(["ip", "netns", "add", f"{name}-client"], check=True)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vagrant.lab", command, "--name", name],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 1
        assert f"lab: {name}-client exist already" in result.stdout, result.stdout + result.stderr
        assert "torn down" not in result.stdout
        assert os.path.exists(f"/var/run/netns/{name}-client")  # the running lab's namespace is left alone
        assert not os.path.exists(f"/var/run/netns/{name}-cluster")
    finally:
        subprocess.run(["ip", "netns", "del", f"{name}-client"], check=False)
