"""The public AI gateway end to end: the real cluster process, real TLS, the openai SDK, fake providers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.fakes.openai_provider import FakeOpenAI
from tests.integration.gateway_env import (
    DEEPSEEK_KEY,
    GEMINI_KEY,
    Gateway,
    apply_docs,
    fetch_token,
    pointed_at_fakes,
    raw,
    sdk,
)

pytestmark = pytest.mark.usefixtures("loopback_names")
CHAT: dict[str, Any] = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hello there gateway"}]}


async def test_openai_sdk_through_gemini_never_sees_the_key(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    client = sdk(gw, "gemini", token)
    reply = await client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "echo: hello there gateway"
    fake = gw.fakes["gemini"][0]
    seen = fake.requests[-1]
    assert seen.path == "/v1beta/openai/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {GEMINI_KEY}"
    assert token not in json.dumps(dict(seen.headers))
    assert seen.headers["X-Forwarded-Proto"] == "https" and seen.headers["X-Forwarded-For"] == "127.0.0.1"
    entry = await gw.last_log(service="gemini")
    assert entry["user"] == "alice" and entry["status"] == 200 and entry["model"] == "gemini-2.5-flash"
    assert entry["usage"]["total_tokens"] == reply.usage.total_tokens
    assert entry["requestId"] == seen.headers["x-request-id"]
    assert GEMINI_KEY not in json.dumps(gw.access_log())


async def test_streaming_relays_chunks_and_logs_usage(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"], "client_secret_basic")
    client = sdk(gw, "gemini", token)
    body = {**CHAT, "messages": [{"role": "user", "content": "one two three four five"}]}
    stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    words = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(words) == "echo: one two three four five"
    entry = await gw.last_log(service="gemini")
    assert entry["usage"]["completion_tokens"] == 6


async def test_first_token_arrives_before_the_stream_ends(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.base_url("gemini") + "/chat/completions",
            json=body,
            ssl=gw.ssl_context(),
            headers={"Authorization": f"Bearer {token}", "x-fake-chunk-delay-ms": "150"},
        ) as r,
    ):
        started = time.monotonic()
        first = await r.content.readline()
        first_at = time.monotonic() - started
        rest = await r.read()
        total = time.monotonic() - started
    assert first.startswith(b"data: ")
    assert first_at < 0.5 < total, (first_at, total)
    assert rest.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize(
    ("model", "provider", "path"),
    [
        ("gpt-4o-mini", "openai", "/v1/v1/chat/completions"),
        ("deepseek-chat", "deepseek", "/v1/chat/completions"),
        ("gemini-2.5-flash", "gemini", "/v1beta/openai/v1/chat/completions"),
        ("gpt-4o", "gemini", "/v1beta/openai/v1/chat/completions"),
    ],
)
async def test_total_ai_routes_by_model(gw: Gateway, model: str, provider: str, path: str) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    reply = await sdk(gw, "total-ai", token).chat.completions.create(model=model, messages=CHAT["messages"])
    assert reply.model == model
    fake = gw.fakes[provider][0]
    assert fake.requests and fake.requests[-1].path == path
    assert fake.requests[-1].json["model"] == model
    others = [f for name, (f, _) in gw.fakes.items() if name != provider]
    assert all(not f.requests for f in others)
    entry = await gw.last_log(service="total-ai")
    assert entry["config"] == {"openai": "openai", "deepseek": "deepseek"}.get(provider, "default")


async def test_non_json_body_goes_to_the_default_config(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    status, _, _ = await raw(
        gw,
        "POST",
        "total-ai",
        "/v1/chat/completions",
        data=b"\xff\xfenot json",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert status == 400
    assert gw.fakes["gemini"][0].requests[-1].body == b"\xff\xfenot json"


async def test_access_token_credential_works_directly(gw: Gateway) -> None:
    reply = await sdk(gw, "gemini", gw.client_secrets["alice-pat"]).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content.startswith("echo:")


async def test_unauthenticated_requests_get_401_in_openai_shape(gw: Gateway) -> None:
    status, headers, body = await raw(gw, "POST", "gemini", "/v1/chat/completions", json=CHAT)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await sdk(gw, "gemini", "sk-made-up").chat.completions.create(**CHAT)
    assert not gw.fakes["gemini"][0].requests


def _hs256(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    """The classic confusion attack: HS256 keyed with public material (PyJWT refuses to make it)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = part({"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + part(claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _forge(gw: Gateway, token: str, **changes: Any) -> list[str]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    other_key = ed25519.Ed25519PrivateKey.generate()
    pub = (gw.cluster.home / "ca.crt").read_bytes()
    segments = token.split(".")
    none_token = (
        base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
        + "."
        + segments[1]
        + "."
    )
    return [
        jwt.encode({**claims, **changes}, other_key, algorithm="EdDSA", headers={"kid": header["kid"]}),
        jwt.encode({**claims, "exp": int(time.time()) - 60}, other_key, algorithm="EdDSA", headers=header),
        none_token,
        _hs256(claims, header["kid"], pub),
        token[:-10],
        token + "x",
        segments[0]
        + "."
        + base64.urlsafe_b64encode(json.dumps({**claims, "aud": "https://elsewhere"}).encode()).rstrip(b"=").decode()
        + "."
        + segments[2],
    ]


async def test_forged_tokens_are_refused(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    for forged in _forge(gw, token, usr="root"):
        status, _, _ = await raw(
            gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {forged}"}
        )
        assert status == 401, forged
    assert not gw.fakes["gemini"][0].requests
    reasons = [e.get("reason", "") for e in gw.access_log() if e.get("status") == 401]
    assert len(reasons) == 7 and all(reasons)


async def test_token_endpoint_errors_follow_rfc6749(gw: Gateway) -> None:
    async with httpx.AsyncClient(verify=gw.ssl_context()) as client:
        wrong = await client.post(
            gw.token_url(),
            data={"grant_type": "client_credentials", "client_id": "alice-oauth", "client_secret": "nope"},
        )
        unknown = await client.post(
            gw.token_url(),
            data={"grant_type": "client_credentials", "client_id": "ghost", "client_secret": "wgt.ghost." + "a" * 43},
        )
        grant = await client.post(
            gw.token_url(),
            data={"grant_type": "password", "client_id": "alice-oauth", "client_secret": gw.client_secrets["alice"]},
        )
        pat = await client.post(
            gw.token_url(),
            data={
                "grant_type": "client_credentials",
                "client_id": "alice-pat",
                "client_secret": gw.client_secrets["alice-pat"],
            },
        )
        meta = (await client.get(gw.cluster.public_url() + "/.well-known/openid-configuration")).json()
        jwks = (await client.get(meta["jwks_uri"])).json()
    assert wrong.status_code == unknown.status_code == pat.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {"error": "invalid_client", "error_description": "client authentication failed"}
    )
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    assert meta["token_endpoint"] == gw.token_url()
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience=meta["issuer"], issuer=meta["issuer"])
    assert claims["usr"] == "alice"


async def test_unknown_and_private_hosts_are_404(gw: Gateway, tmp_path: Path) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    auth = {"Authorization": f"Bearer {token}"}
    assert (await raw(gw, "GET", "nope", "/v1/models", headers=auth))[0] == 404
    doc = {
        "kind": "Service",
        "metadata": {"name": "internal"},
        "spec": {
            "isPublic": False,
            "config": {"upstream": {"url": gw.fakes["gemini"][1]}},
            "authorization": {
                "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]
            },
        },
    }
    apply_docs(gw.cluster, [doc], tmp_path)
    assert (await raw(gw, "GET", "internal", "/v1/models", headers=auth))[0] == 404
    for host in ("a.b.wardgate.test", "x" * 300 + ".wardgate.test", "gemini.wardgate.test.evil.com", "[::1]"):
        assert (await raw(gw, "GET", "gemini", "/v1/models", headers={**auth, "Host": host}))[0] == 404


async def test_revoking_a_session_or_credential_works_at_once(gw: Gateway) -> None:
    token = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
    auth = {"Authorization": f"Bearer {token}"}
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers=auth))[0] == 200
    session = jwt.decode(token, options={"verify_signature": False})["sub"]
    listed = gw.cluster.ctl("get", "sessions", check=True).stdout
    assert session in listed
    gw.cluster.ctl("delete", "session", session, check=True)
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers=auth))[0] == 401
    token2 = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
    out = gw.cluster.ctl("delete", "credential", "bob-oauth", check=True).stdout
    assert "session/" in out
    status, _, _ = await raw(
        gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token2}"}
    )
    assert status == 401
    with pytest.raises(Exception, match="invalid_client"):
        await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])


async def test_identity_headers_from_clients_are_stripped(gw: Gateway) -> None:
    token = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])
    spoofed = {
        "Authorization": f"Bearer {token}",
        "X-Wardgate-User": "root",
        "X-Forwarded-User": "root",
        "X-Forwarded-For": "6.6.6.6",
        "X-Request-Id": "mine",
        "Forwarded": "for=6.6.6.6",
        "Cookie": "wardgate_session=abc; theme=dark",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "should-go",
        "X-Custom": "kept",
    }
    status, headers, _ = await raw(gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers=spoofed)
    assert status == 200
    seen = gw.fakes["gemini"][0].requests[-1].headers
    assert "X-Wardgate-User" not in seen and "X-Forwarded-User" not in seen and "Forwarded" not in seen
    assert "X-Hop" not in seen and seen["X-Custom"] == "kept"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["x-request-id"] != "mine" and headers["x-request-id"] == seen["x-request-id"]
    assert seen["Cookie"] == "theme=dark"


async def test_upstream_faults_are_reported_and_the_gateway_keeps_serving(gw: Gateway, tmp_path: Path) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    auth = {"Authorization": f"Bearer {token}"}
    status, _, body = await raw(
        gw, "POST", "gemini", "/v1/chat/completions", json=CHAT, headers={**auth, "x-fake-fail-after-chunks": "0"}
    )
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_unreachable"
    client = sdk(gw, "gemini", token)
    stream = await client.chat.completions.create(
        **{**CHAT, "messages": [{"role": "user", "content": "w " * 30}]},
        stream=True,
        extra_headers={"x-fake-fail-after-chunks": "3"},
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    big = io.BytesIO(json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (11 * 1024 * 1024)}]}).encode())
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", data=big, headers=auth))[0] == 413
    gw.cluster.ctl("delete", "secret", "deepseek-api-key", check=True)
    status, _, body = await raw(
        gw, "POST", "total-ai", "/v1/chat/completions", json={**CHAT, "model": "deepseek-chat"}, headers=auth
    )
    assert status == 500 and DEEPSEEK_KEY not in body.decode()
    assert "secret 'deepseek-api-key' does not exist" in gw.cluster.log_path.read_text()
    docs = pointed_at_fakes(
        {"gemini": "http://127.0.0.1:9", "openai": "http://127.0.0.1:9", "deepseek": "http://127.0.0.1:9"}
    )
    slow = next(d for d in docs if d["metadata"]["name"] == "gemini")
    slow["metadata"]["name"] = "slow"
    slow["spec"]["config"]["upstream"]["url"] = gw.fakes["gemini"][1]
    slow["spec"]["config"]["http"]["timeouts"] = {"read": "300ms"}
    down = json.loads(json.dumps(slow))
    down["metadata"]["name"] = "down"
    down["spec"]["config"]["upstream"]["url"] = "http://127.0.0.1:9"
    apply_docs(gw.cluster, [slow, down], tmp_path)
    status, _, _ = await raw(
        gw, "POST", "slow", "/v1/chat/completions", json=CHAT, headers={**auth, "x-fake-latency-ms": "2000"}
    )
    assert status == 504
    status, _, body = await raw(gw, "POST", "down", "/v1/chat/completions", json=CHAT, headers=auth)
    assert status == 502 and json.loads(body)["error"]["type"] == "server_error"
    for bad_path in ("/v1/../admin", "/v1/%2e%2e/admin", "/v1%2fchat"):
        assert (await raw(gw, "GET", "gemini", bad_path, headers=auth))[0] in (400, 404)
    reply = await client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "echo: hello there gateway"


async def test_http_config_prefixes_headers_cors_and_custom_auth(gw: Gateway, tmp_path: Path) -> None:
    custom = FakeOpenAI(api_key="goog-key-123", api_key_header="x-goog-api-key")
    async with custom.serve() as url:
        service = {
            "kind": "Service",
            "metadata": {"name": "shaped"},
            "spec": {
                "isPublic": True,
                "config": {
                    "upstream": {"url": url + "/base"},
                    "http": {
                        "path": {"removePrefix": "/api", "addPrefix": "/v1beta/openai"},
                        "header": {
                            "addRequestHeaders": [{"name": "x-team", "value": "research"}],
                            "removeRequestHeaders": ["x-debug"],
                            "addResponseHeaders": [{"name": "x-served-by", "value": "wardgate"}],
                            "removeResponseHeaders": ["x-fake-provider"],
                        },
                        "cors": {"allowOrigins": ["https://app.example.com"], "allowCredentials": True},
                        "auth": {"custom": {"header": "x-goog-api-key", "fromSecret": "goog"}},
                    },
                },
                "authorization": {
                    "inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]
                },
            },
        }
        secret = {"kind": "Secret", "metadata": {"name": "goog"}, "spec": {"data": {"value": "goog-key-123"}}}
        apply_docs(gw.cluster, [secret, service], tmp_path)
        token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
        status, headers, _ = await raw(
            gw,
            "POST",
            "shaped",
            "/api/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {token}", "x-debug": "1", "Origin": "https://app.example.com"},
        )
        assert status == 200
        seen = custom.requests[-1]
        assert seen.path == "/base/v1beta/openai/chat/completions"
        assert seen.headers["x-team"] == "research" and "x-debug" not in seen.headers
        assert seen.headers["x-goog-api-key"] == "goog-key-123" and "Authorization" not in seen.headers
        assert seen.headers["Host"] == url.removeprefix("http://")
        assert headers["x-served-by"] == "wardgate"
        assert headers["access-control-allow-origin"] == "https://app.example.com"
        assert headers["access-control-allow-credentials"] == "true"
        before = len(custom.requests)
        status, headers, _ = await raw(
            gw,
            "OPTIONS",
            "shaped",
            "/api/chat/completions",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert status == 204 and "POST" in headers["access-control-allow-methods"]
        status, _, _ = await raw(
            gw,
            "OPTIONS",
            "shaped",
            "/api/chat/completions",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert status == 403
        assert len(custom.requests) == before


async def test_client_disconnect_cancels_the_upstream_request(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "w " * 50}]}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gw.base_url("gemini") + "/chat/completions",
            json=body,
            ssl=gw.ssl_context(),
            headers={"Authorization": f"Bearer {token}", "x-fake-chunk-delay-ms": "200"},
        )
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()
    entry = await gw.last_log(service="gemini", status=499)
    assert entry["error"] == "client disconnected"
    assert entry["durationMs"] < 5000


async def test_header_injection_and_garbage_requests_do_not_hurt(gw: Gateway) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    context = gw.ssl_context()
    for payload in (
        b"GET /v1/models HTTP/1.1\r\nHost: gemini.wardgate.test\r\nX-Evil: a\rInjected: b\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: gemini.wardgate.test\r\nX-Evil: a\nInjected: b\r\n\r\n",
        b"\x16\x03\x01garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: " + b"a" * 70000 + b"\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.cluster.public_port, ssl=context, server_hostname="gemini.wardgate.test"
        )
        writer.write(payload)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 5)
        assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer
        writer.close()
    reply = await sdk(gw, "gemini", token).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "echo: hello there gateway"
    assert "Injected" not in json.dumps([dict(r.headers) for r in gw.fakes["gemini"][0].requests])
