"""`make run` as a newcomer meets it: scripts/run-node.sh in a temporary home on free ports, then the first
request it prints (<home>/first-request.sh, and the OpenAI SDK version) streams an answer from the real local
model (SmolLM2-135M, scripts/local_model.py) through the gateway, with no key in the caller's hands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, REPO, free_port

READY = "Administer it:"
"""The last lines `make run` prints start with this, once everything answers."""


@dataclass
class MakeRun:
    home: Path
    process: subprocess.Popen[bytes]
    output: Path
    model_port: int

    def printed(self) -> str:
        return self.output.read_text()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop what the script started, as Ctrl-C in `make run` would: the whole process group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while True:  # the children leave after the script: wait until none of the group is left
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            return
        time.sleep(0.1)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    home = tmp_path / "home"
    model_port = free_port()
    env = {
        **os.environ,
        "BIN": str(BIN),
        "HOME_DIR": str(home),
        "PUBLIC_LISTEN": f"127.0.0.1:{free_port()}",
        "ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "LOCAL_MODEL_LISTEN": f"127.0.0.1:{model_port}",
        "AGENT": "off",  # a second WireGuard interface on this host is not this test's business
    }
    output = tmp_path / "make-run.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["scripts/run-node.sh"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = MakeRun(home, process, output, model_port)
    try:
        deadline = time.monotonic() + 180
        while READY not in running.printed():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("make run did not come up:\n" + running.printed())
            time.sleep(0.2)
        yield running
    finally:
        _stop_group(process)


def _stream(command: list[str]) -> tuple[list[str], list[float], str]:
    """Run a first-request program; its stdout lines, the time each arrived, and its stderr."""
    lines: list[str] = []
    times: list[float] = []
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                times.append(time.monotonic())
            stderr = process.stderr.read()
            process.wait(timeout=180)
        finally:
            process.kill()
    assert process.returncode == 0, f"{command} exited {process.returncode}:\n{stderr}\n" + "\n".join(lines)
    return lines, times, stderr


def _service_records(home: Path, count: int) -> list[dict[str, Any]]:
    """The access log's Service lines once there are `count` of them: a line is written when the exchange
    ends, which can be a moment after the client has read the last chunk."""
    deadline = time.monotonic() + 15
    while True:
        lines = (home / "access.log").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if r.get("service")]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_printed_first_request_streams_an_answer_from_the_local_model(make_run: MakeRun) -> None:
    script = make_run.home / "first-request.sh"
    commands = script.read_text().split("set -eu\n", 1)[1]
    assert commands in make_run.printed(), "make run prints the command first-request.sh holds"

    lines, times, _ = _stream(["sh", str(script)])
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    content = [
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(content) >= 5 and "".join(content).strip(), lines
    assert all(c["model"] == "smollm2-135m" for c in chunks)
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] >= len(content)
    first = times[next(i for i, line in enumerate(lines) if '"content":"' in line)]
    assert times[-1] - first > 0.05, "the answer came in one piece, not as a stream"

    (record,) = _service_records(make_run.home, 1)
    assert record["service"] == "local-llm"
    assert record["user"] == "demo-app" and record["credential"] == "demo-app-oauth"
    assert record["status"] == 200 and record["upstreamStatus"] == 200
    assert record["decision"] == {
        "effect": "ALLOW",
        "reason": "rule-match",
        "policy": "policy/local-llm-access",
        "rule": "dev-may-chat",
    }
    assert record["usage"]["completion_tokens"] == usage["completion_tokens"]

    # The injection is real: the model refuses a caller without the key that only the gateway holds.
    models = f"http://127.0.0.1:{make_run.model_port}/v1/models"
    bare = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", models], capture_output=True, text=True
    )
    assert bare.stdout == "401"

    sdk_lines, _, _ = _stream([str(BIN / "python"), str(make_run.home / "first-request.py")])
    assert "".join(sdk_lines).strip(), "the OpenAI SDK snippet printed no answer"
    sdk = _service_records(make_run.home, 2)
    assert [(r["user"], r["status"]) for r in sdk] == [("demo-app", 200)] * 2

    _stop_group(make_run.process)
    assert _refused(make_run.model_port), "the local model outlived make run"
