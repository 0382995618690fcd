"""Request hygiene, errors: bytes that clients refuse to send (sent here over raw TLS sockets) get a clean 4xx
with one access-log line, on the public and the admin listener, and no credential in any output."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.integration.hardening_env import Hygiene, body_of, hygiene_env, status_of

SECRET = "wgsecretTOKEN0123456789"


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hygiene]:
    async with hygiene_env(tmp_path_factory.mktemp("hygiene")) as running:
        yield running


def _admin_port(env: Hygiene) -> int:
    return int(env.cluster.url.rsplit(":", 1)[1])


async def _settled_log(env: Hygiene, before: int, expected: int) -> list[dict[str, object]]:
    for _ in range(50):
        entries = env.log()[before:]
        if len(entries) >= expected:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return env.log()[before:]


def _no_secret_anywhere(env: Hygiene, answer: bytes, secret: str = SECRET) -> None:
    assert secret.encode() not in answer, answer
    assert secret not in "\n".join(env.cluster.access_log())
    assert secret not in env.cluster.log_path.read_text(errors="replace")


def _request(host: str, *headers: bytes, target: bytes = b"/v1/models") -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host.encode(), b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


NON_UTF8 = [
    b"Authorization: Bearer \xff\xfe" + SECRET.encode(),
    b"Authorization: Bearer " + SECRET.encode() + b"\xc3\x28",
    b"Cookie: wardgate_session=\xff" + SECRET.encode(),
    b"Cookie: theme=dark; wardgate_session=" + SECRET.encode() + b"\xe2\x82",
]


@pytest.mark.parametrize("header", NON_UTF8)
async def test_a_non_utf8_credential_is_401_on_the_public_listener(env: Hygiene, header: bytes) -> None:
    before = len(env.log())
    answer = await env.send(_request(env.host(), header))
    assert status_of(answer) == 401, answer
    entries = await _settled_log(env, before, 1)
    assert [e["status"] for e in entries] == [401]
    _no_secret_anywhere(env, answer)


@pytest.mark.parametrize("header", [h for h in NON_UTF8 if h.startswith(b"Authorization")])
async def test_a_non_utf8_bearer_token_is_401_on_the_admin_api(env: Hygiene, header: bytes) -> None:
    before = len(env.log())
    answer = await env.send(_request("127.0.0.1", header, target=b"/api/v1/services"), port=_admin_port(env))
    assert status_of(answer) == 401, answer
    entries = await _settled_log(env, before, 1)
    assert [e["status"] for e in entries] == [401]
    _no_secret_anywhere(env, answer)


@pytest.mark.parametrize("host", [b"\xff\xfe.wardgate.test", b"echo.wardgate.test\xc3\x28", b"\xe2\x82.wardgate.test"])
async def test_a_non_utf8_host_is_a_clean_4xx_with_one_log_line(env: Hygiene, host: bytes) -> None:
    before = len(env.log())
    request = b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
    answer = await env.send(request + b"Authorization: Bearer " + env.token.encode() + b"\r\n\r\n")
    assert 400 <= status_of(answer) < 500, answer
    entries = await _settled_log(env, before, 1)
    assert [e["status"] for e in entries] == [status_of(answer)]
    _no_secret_anywhere(env, answer, env.token)


MALFORMED = [
    pytest.param(b"Cookie: wardgate_session=" + SECRET.encode() + b"A" * 9000, id="cookie-too-large"),
    pytest.param(b"Authorization: Bearer " + SECRET.encode() + b"A" * 9000, id="bearer-too-large"),
    pytest.param(b"X-" + SECRET.encode() + b"A" * 9000 + b": v", id="header-name-too-large"),
    pytest.param(b"Authorization: Bearer " + SECRET.encode() + b"\x00", id="nul-in-token"),
    pytest.param(b"Cookie: wardgate_session=" + SECRET.encode() + b"\x7f", id="del-in-cookie"),
    pytest.param(b"X-Note: " + SECRET.encode() + b"\r", id="bare-cr"),
]


async def _malformed(env: Hygiene, header: bytes, port: int, host: str) -> None:
    before = len(env.log())
    answer = await env.send(_request(host, header), port=port)
    assert status_of(answer) in (400, 431), answer
    assert body_of(answer).strip() in (b"Bad Request", b"Request Header Fields Too Large")
    entries = await _settled_log(env, before, 1)
    assert [e["status"] for e in entries] == [status_of(answer)]
    _no_secret_anywhere(env, answer)


@pytest.mark.parametrize("header", MALFORMED)
async def test_a_malformed_request_is_a_plain_4xx_on_the_public_listener(env: Hygiene, header: bytes) -> None:
    await _malformed(env, header, env.cluster.public_port, env.host())


@pytest.mark.parametrize("header", MALFORMED)
async def test_a_malformed_request_is_a_plain_4xx_on_the_admin_listener(env: Hygiene, header: bytes) -> None:
    await _malformed(env, header, _admin_port(env), "127.0.0.1")


async def test_a_too_long_request_line_echoes_nothing(env: Hygiene) -> None:
    before = len(env.log())
    answer = await env.send(_request(env.host(), target=b"/v1/models?key=" + SECRET.encode() + b"A" * 9000))
    assert 400 <= status_of(answer) < 500, answer
    assert len(await _settled_log(env, before, 1)) == 1
    _no_secret_anywhere(env, answer)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/api/v1/apply", '{"documents": ' + _deep(100_000) + "}"),
        (
            "/api/v1/apply",
            '{"documents": [{"source": "x", "index": 0, "object": {"kind": "Secret", "metadata": {"name": "d"}, '
            '"spec": {"data": {"v": ' + _deep(900) + "}}}}]}",
        ),
        ("/api/v1/policy/eval", '{"service": "echo", "user": "tester", "body": ' + _deep(100_000) + "}"),
        ("/api/v1/services/deep", '{"metadata": {"name": "deep"}, "spec": ' + _deep(100_000) + "}"),
    ],
)
async def test_a_deeply_nested_body_to_the_admin_api_is_4xx(env: Hygiene, target: str, body: str) -> None:
    context = ssl.create_default_context(cafile=str(env.cluster.home / "ca.crt"))
    method = "PUT" if target.startswith("/api/v1/services/") else "POST"
    raw = body.encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {env.cluster.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", _admin_port(env), ssl=context)
    writer.write(head + raw)
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert 400 <= status_of(answer) < 500, answer[:300]
    assert json.loads(body_of(answer))["error"]["type"] == "invalid"


async def test_wardgatectl_apply_of_a_deep_manifest_fails_cleanly(env: Hygiene, tmp_path: Path) -> None:
    doc = {"kind": "Secret", "metadata": {"name": "deep"}, "spec": {"data": {"v": "x"}}}
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(doc).replace('"x"', _deep(300)))
    result = env.cluster.ctl("apply", "-f", str(path))
    assert result.returncode != 0
    assert "nests deeper" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "500" not in result.stdout + result.stderr
    shallow = tmp_path / "ok.yaml"
    shallow.write_text(yaml.safe_dump(doc))
    env.cluster.ctl("apply", "-f", str(shallow), check=True)
