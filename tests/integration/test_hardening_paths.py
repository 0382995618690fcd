"""Request hygiene, paths: a rule judges the normalised path, and the upstream gets that same path, so no
spelling of a denied path (doubled slashes, dot segments, percent-encoded letters) gets past a DENY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.integration.hardening_env import Hygiene, hygiene_env, status_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hygiene]:
    async with hygiene_env(tmp_path_factory.mktemp("hygiene")) as running:
        yield running


DENIED_SPELLINGS = [
    "/admin/x",
    "//admin/x",
    "///admin",
    "/./admin/x",
    "/a/../admin/x",
    "/a/b/../../admin",
    "/../admin",
    "/%61dmin/x",
    "/%61%64%6D%69%6E",
    "/%2e/admin",
    "/x/%2e%2e/admin",
    "/x/.%2E/admin",
    "/.%2e/admin",
    "//%61dmin//x",
    "/v1/..//admin",
    "/admin",
    "/admin?x=1",
]


@pytest.mark.parametrize("target", DENIED_SPELLINGS)
async def test_a_denied_path_is_denied_in_every_spelling(env: Hygiene, target: str) -> None:
    before = len(env.echo.seen)
    assert status_of(await env.get(target)) == 403
    assert len(env.echo.seen) == before


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("//v1//models", "/v1/models"),
        ("/v1/./models", "/v1/models"),
        ("/v1/x/../models", "/v1/models"),
        ("/v1/models/.", "/v1/models/"),
        ("/%7Euser/%41b%2D%5F%2E", "/~user/Ab-_."),
        ("/v1/a%20b", "/v1/a%20b"),
        ("/v1/x%3by", "/v1/x%3By"),
        ("/v1/%40me", "/v1/%40me"),
        ("/Admin/x", "/Admin/x"),
        ("/administrators/../v1?q=%61&x=//..", "/v1?q=%61&x=//.."),
    ],
)
async def test_the_upstream_gets_the_path_the_rule_judged(env: Hygiene, target: str, forwarded: str) -> None:
    assert status_of(await env.get(target)) == 200
    assert env.echo.last.target == forwarded


@pytest.mark.parametrize("target", ["/v1%2fadmin", "/v1%2Fmodels", "/%5cadmin", "/v1/a%00b", "/v1\\admin"])
async def test_encoded_separators_are_refused(env: Hygiene, target: str) -> None:
    before = len(env.echo.seen)
    assert status_of(await env.get(target)) == 400
    assert len(env.echo.seen) == before


async def test_each_refusal_writes_one_access_log_line(env: Hygiene) -> None:
    before = len(env.log())
    for target in ["//admin/x", "/v1%2fadmin"]:
        await env.get(target)
    await asyncio.sleep(0.2)
    assert [(e["service"], e["status"]) for e in env.log()[before:]] == [("echo", 403), ("echo", 400)]
