"""Request hygiene, identity: the session cookie in any spelling the gateway accepts never reaches an upstream,
an upstream cannot set cookies for the gateway's domain, and identity or routing headers a client sends are
stripped (underscore spellings too) unless a Service lets a named one through."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.integration.hardening_env import SET_COOKIES, Hygiene, body_of, hygiene_env, status_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hygiene]:
    async with hygiene_env(tmp_path_factory.mktemp("hygiene")) as running:
        yield running


def _leaked(env: Hygiene) -> bool:
    return env.token in json.dumps(env.echo.last.headers)


ACCEPTED_SPELLINGS = [
    "wardgate_session={t}",
    "wardgate_session ={t}; theme=dark",
    "wardgate_session\t=\t{t}; theme=dark",
    "theme=dark, wardgate_session={t}",
    "theme=dark wardgate_session={t}",
    'wardgate_session="{t}"; theme=dark',
    ";; wardgate_session = {t} ;",
    "wardgate_session={t}; wardgate_session={t}",
    'theme="dark; wardgate_session={t}',
]


@pytest.mark.parametrize("spelling", ACCEPTED_SPELLINGS)
async def test_a_session_cookie_the_gateway_accepts_is_never_forwarded(env: Hygiene, spelling: str) -> None:
    answer = await env.get("/v1/models", [("Cookie", spelling.format(t=env.token))])
    assert status_of(answer) == 200, answer
    assert not _leaked(env), env.echo.last.all("Cookie")


async def test_the_session_cookie_in_a_second_cookie_line_is_accepted_and_never_forwarded(env: Hygiene) -> None:
    answer = await env.get("/v1/models", [("Cookie", "theme=dark"), ("Cookie", f"wardgate_session={env.token}")])
    assert status_of(answer) == 200, answer
    assert not _leaked(env)
    assert "theme=dark" in env.echo.last.all("Cookie")


@pytest.mark.parametrize(
    "spelling",
    [
        "Wardgate_Session={t}",
        "$wardgate_session={t}",
        'theme="x; wardgate_session={t}"',
        "theme=dark,wardgate_session={t}",
        "theme=x=wardgate_session={t}",
    ],
)
async def test_spellings_other_parsers_would_read_as_the_session_are_not_forwarded(env: Hygiene, spelling: str) -> None:
    headers = [("Authorization", f"Bearer {env.token}"), ("Cookie", spelling.format(t=env.token))]
    assert status_of(await env.get("/v1/models", headers)) == 200
    assert not _leaked(env), env.echo.last.all("Cookie")


async def test_other_cookies_still_reach_the_upstream(env: Hygiene) -> None:
    headers = [("Cookie", f"theme=dark; wardgate_session={env.token}; lang=en")]
    assert status_of(await env.get("/v1/models", headers)) == 200
    assert env.echo.last.all("Cookie") == ["theme=dark; lang=en"]


async def test_two_different_session_cookies_are_ambiguous_and_refused(env: Hygiene) -> None:
    before = len(env.echo.seen)
    answer = await env.get("/v1/models", [("Cookie", f"wardgate_session=other; wardgate_session={env.token}")])
    assert status_of(answer) == 401
    assert len(env.echo.seen) == before


@pytest.mark.parametrize(
    ("cookie", "kept"),
    [
        ("wardgate_session=attacker; Path=/", False),
        ("WARDGATE_SESSION=attacker; Path=/", False),
        ("__Host-wardgate_session=attacker; Path=/; Secure", False),
        ("pref=1; Domain=wardgate.test; Path=/", False),
        ("pref=1; domain=.wardgate.test", False),
        ("pref=1; Path=/; DOMAIN = WARDGATE.TEST", False),
        ("pref=1; Domain=test", False),
        ("pref=1; Path=/; HttpOnly; Secure", True),
    ],
)
async def test_an_upstream_cannot_toss_cookies_onto_the_domain(env: Hygiene, cookie: str, kept: bool) -> None:
    answer = await env.get(
        "/v1/models", [("Authorization", f"Bearer {env.token}"), (SET_COOKIES, json.dumps([cookie, "mine=1"]))]
    )
    assert status_of(answer) == 200
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert "set-cookie: mine=1" in head
    assert (f"set-cookie: {cookie.lower()}" in head) is kept


SPOOFED = [
    "True-Client-IP",
    "X-Client-IP",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
    "Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Authenticated-User",
    "X-Amzn-Oidc-Identity",
    "X-Amzn-Oidc-Data",
    "X-Amzn-Oidc-Accesstoken",
    "X-Goog-Authenticated-User-Email",
    "X-Goog-Authenticated-User-Id",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Ms-Client-Principal",
    "X-Ms-Client-Principal-Name",
    "X-Ms-Client-Principal-Id",
    "X-Forwarded-Prefix",
    "X-Original-Host",
    "X-Host",
    "X-Forwarded-User",
    "X-Wardgate-User",
]


def _folded(name: str) -> str:
    return name.lower().replace("_", "-")


async def test_identity_and_routing_headers_are_stripped_in_every_spelling(env: Hygiene) -> None:
    spoofed = [(n, "spoofed") for n in SPOOFED]
    spoofed += [(n.replace("-", "_"), "spoofed") for n in SPOOFED]
    spoofed += [("X_Forwarded_For", "6.6.6.6"), ("x_real_ip", "6.6.6.6"), ("Transfer_Encoding", "chunked")]
    answer = await env.get("/v1/models", [("Authorization", f"Bearer {env.token}"), *spoofed, ("X-Custom", "kept")])
    assert status_of(answer) == 200, body_of(answer)
    seen = env.echo.last
    assert not [(k, v) for k, v in seen.headers if v in ("spoofed", "6.6.6.6")], seen.headers
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Custom") == ["kept"]
    assert "transfer_encoding" not in seen.names()


async def test_a_service_lets_named_identity_headers_through_and_no_others(env: Hygiene) -> None:
    sent = [("True-Client-IP", "203.0.113.9"), ("X-Forwarded-Prefix", "/app"), ("X-Client-IP", "spoofed")]
    sent += [("True_Client_IP", "spoofed"), ("X-Wardgate-User", "spoofed")]
    answer = await env.get("/v1/models", [("Authorization", f"Bearer {env.token}"), *sent], service="passing")
    assert status_of(answer) == 200
    seen = env.echo.last
    assert seen.all("True-Client-IP") == ["203.0.113.9"] and seen.all("X-Forwarded-Prefix") == ["/app"]
    assert "spoofed" not in json.dumps(seen.headers)


@pytest.mark.parametrize(
    "names",
    [["Authorization"], ["X-Wardgate-User"], ["X-Forwarded-For"], ["Host"], ["Not-An-Identity-Header"], ["bad name"]],
)
async def test_pass_identity_headers_names_only_strippable_identity_headers(
    env: Hygiene, names: list[str], tmp_path: Path
) -> None:
    doc = {
        "kind": "Service",
        "metadata": {"name": "loose"},
        "spec": {"config": {"upstream": {"url": env.upstream}, "http": {"header": {"passIdentityHeaders": names}}}},
    }
    path = tmp_path / "loose.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = env.cluster.ctl("apply", "-f", str(path))
    assert result.returncode != 0
    assert "passIdentityHeaders" in result.stdout + result.stderr
