"""`make run` as root starts the node agent, and the README's same-machine client path works: the script runs in
a namespace standing for the host, a second namespace is the client (veth), `wardgate login`/`connect` there,
then the OpenAI SDK reaches `local-llm` by its private name with no key and no token.

    client ns ──veth──▶ node ns: scripts/run-node.sh (cluster, local model, wardgate-agent + wireguard-go)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import BIN, REPO
from tests.netns.lab import Lab

READY = "Administer it:"


def _run(netns: str, *argv: str, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv} in {netns} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def test_make_run_starts_the_agent_and_a_client_reaches_local_llm_by_name(lab: Lab, tmp_path: Path) -> None:
    _make_run_then_connect(lab, tmp_path)  # async only for the lab fixture; the steps are blocking commands


def _make_run_then_connect(lab: Lab, tmp_path: Path) -> None:
    node, client = lab.namespace(), lab.namespace()
    node_address, _ = lab.veth(node, client, 77)
    home = tmp_path / "home"
    env = {
        **os.environ,
        "BIN": str(BIN),
        "HOME_DIR": str(home),
        "TUNNEL_INTERFACE": lab.interface_name(),  # wireguard-go's sockets are shared by every namespace
        "XDG_CONFIG_HOME": str(tmp_path / "client-config"),
        "WARDGATE_CONFIG": str(home / "wardgatectl.toml"),
    }
    output = tmp_path / "make-run.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", node, "scripts/run-node.sh"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    connected = False
    try:
        deadline = time.monotonic() + 180
        while READY not in output.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("make run did not come up:\n" + output.read_text())
            time.sleep(0.2)
        assert f"The node agent: running (node local, interface {env['TUNNEL_INTERFACE']}" in output.read_text()

        created = _run(node, str(BIN / "wardgatectl"), "create", "credential", "alice-laptop", "--user", "alice",
                       "--type", "auth-token", env=env)  # fmt: skip
        token = next(line.split()[-1] for line in created.splitlines() if "token:" in line)
        wardgate = str(BIN / "wardgate")
        _run(client, wardgate, "login", "--domain", "wardgate.localhost", "--ca", str(home / "ca.crt"),
             "--address", f"{node_address}:8443", "--auth-token", token, env=env)  # fmt: skip
        _run(client, wardgate, "connect", "--detach", "--interface", lab.interface_name(), env=env)
        connected = True

        sdk = (
            "import openai; print(openai.OpenAI(base_url='http://local-llm.local.wardgate.localhost/v1', "
            "api_key='none').chat.completions.create(model='smollm2-135m', max_tokens=30, "
            "messages=[{'role': 'user', 'content': 'hi'}]).choices[0].message.content)"
        )
        answer = _run(client, sys.executable, "-c", sdk, env=env, timeout=180)
        assert answer.strip(), "the local model gave no answer over the tunnel"

        deadline = time.monotonic() + 15  # the line is written as the exchange ends, a moment after the answer
        while True:
            records = [json.loads(line) for line in (home / "access.log").read_text().splitlines()]
            found = [r for r in records if r.get("service") == "local-llm"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        (record,) = found
        assert (record["listener"], record["user"], record["sessionType"]) == ("tunnel", "alice", "CLIENT")
        assert record["status"] == 200 and record["decision"]["rule"] == "dev-may-chat"
    finally:
        if connected:
            subprocess.run(["ip", "netns", "exec", client, str(BIN / "wardgate"), "disconnect"], env=env, timeout=60)
        _stop_group(process)
    assert "agent" in (home / "agent.log").read_text()
