"""Policies through the real gateway: the seed's my-api, policy eval without traffic, the admin API
governed by policy, apply-time compilation of CEL and Rego, and credential expiry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.gateway_env import Gateway, apply_docs, create_credential, fetch_token, raw

pytestmark = pytest.mark.usefixtures("loopback_names")

ALLOWED: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 0.5,
    "messages": [{"role": "user", "content": "hi"}],
}

# (name, user, body change, expected status): each condition of my-api, on each side.
REGO_POLICY = """package wardgate.rego_api

allow if {
  input.ctx.request.http.bodyMap.temperature < 0.7
  "ops" in input.ctx.user.spec.groups
}
"""

CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("allowed", "alice", {}, 200),
    ("temperature zero (int)", "alice", {"temperature": 0}, 200),
    ("three messages", "alice", {"messages": [{"role": "user", "content": "x"}] * 3}, 200),
    ("only dev", "bob", {}, 403),
    ("four messages", "alice", {"messages": [{"role": "user", "content": "x"}] * 4}, 403),
    ("model not listed", "alice", {"model": "gpt-3.5-turbo"}, 403),
    ("temperature 0.7", "alice", {"temperature": 0.7}, 403),
    ("temperature one (int)", "alice", {"temperature": 1}, 403),
    ("temperature 1.0", "alice", {"temperature": 1.0}, 403),
    ("no temperature", "alice", {"temperature": None}, 403),
    ("workload in dev+ops", "ci-bot", {}, 200),
]


async def _tokens(gw: Gateway) -> dict[str, str]:
    secret = create_credential(gw.cluster, "ci-bot-oauth", "ci-bot", "oauth2")
    return {
        "alice": await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"]),
        "bob": await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"]),
        "ci-bot": await fetch_token(gw, "ci-bot-oauth", secret),
    }


async def test_my_api_policy_on_each_side_of_each_condition(gw: Gateway) -> None:
    tokens = await _tokens(gw)
    for name, user, change, expected in CASES:
        body = {k: v for k, v in {**ALLOWED, **change}.items() if v is not None}
        status, _, answer = await raw(
            gw, "POST", "my-api", "/chat/completions", json=body, headers={"Authorization": f"Bearer {tokens[user]}"}
        )
        assert status == expected, (name, answer)
        if status == 403:
            error = json.loads(answer)["error"]
            assert error["code"] == "forbidden" and "ctx." not in error["message"]
    entries = await gw.log_entries(len(CASES), service="my-api")
    assert len(entries) == len(CASES)
    by_status = {e["status"] for e in entries}
    assert by_status == {200, 403}
    denied = [e["decision"] for e in entries if e["status"] == 403]
    assert {d["reason"] for d in denied} == {"no-rule-matched", "condition-error"}
    allowed = next(e["decision"] for e in entries if e["status"] == 200)
    assert allowed["effect"] == "ALLOW" and allowed["policy"] == "service/my-api/inline[0]"


def test_policy_eval_cli_matches_the_gateway(gw: Gateway, tmp_path: Path) -> None:
    body = tmp_path / "req.json"
    for _, user, change, expected in CASES:
        body.write_text(json.dumps({k: v for k, v in {**ALLOWED, **change}.items() if v is not None}))
        result = gw.cluster.ctl("policy", "eval", "--service", "my-api", "--user", user, "--body", f"@{body}")
        assert result.returncode == (0 if expected == 200 else 3), result.stdout + result.stderr
        assert ("decision: ALLOW" if expected == 200 else "decision: DENY") in result.stdout
    out = json.loads(
        gw.cluster.ctl(
            "policy",
            "eval",
            "--service",
            "total-ai",
            "--user",
            "alice",
            "--body",
            '{"model": "deepseek-chat"}',
            "-o",
            "json",
        ).stdout
    )
    assert out["config"] == "deepseek" and out["decision"]["effect"] == "ALLOW"
    missing = gw.cluster.ctl("policy", "eval", "--service", "nope", "--user", "alice")
    assert missing.returncode == 1 and "service/nope not found" in missing.stderr


async def test_a_group_deny_overrides_a_service_allow(gw: Gateway, tmp_path: Path) -> None:
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    headers = {"Authorization": f"Bearer {token}"}
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=ALLOWED, headers=headers))[0] == 200
    ops = {
        "kind": "Group",
        "metadata": {"name": "ops"},
        "spec": {
            "authorization": {
                "inlinePolicies": [
                    {
                        "name": "no-gemini",
                        "spec": {
                            "rules": [
                                {"effect": "DENY", "condition": {"match": 'ctx.service.metadata.name == "gemini"'}}
                            ]
                        },
                    }
                ]
            }
        },
    }
    apply_docs(gw.cluster, [ops], tmp_path)
    status, _, _ = await raw(gw, "POST", "gemini", "/v1/chat/completions", json=ALLOWED, headers=headers)
    assert status == 403
    entry = await gw.last_log(service="gemini", status=403)
    assert entry["decision"]["policy"] == "group/ops/inline/no-gemini"


async def test_rego_condition_is_enforced(gw: Gateway, tmp_path: Path) -> None:
    service = {
        "kind": "Service",
        "metadata": {"name": "rego-api"},
        "spec": {
            "isPublic": True,
            "config": {
                "upstream": {"url": gw.fakes["openai"][1]},
                "http": {"auth": {"bearer": {"fromSecret": "openai-api-key"}}},
            },
            "authorization": {
                "inlinePolicies": [
                    {
                        "spec": {
                            "rules": [
                                {
                                    "effect": "ALLOW",
                                    "condition": {"opa": {"inline": REGO_POLICY}},
                                }
                            ]
                        }
                    }
                ]
            },
        },
    }
    apply_docs(gw.cluster, [service], tmp_path)
    tokens = await _tokens(gw)
    cases = [("alice", 0.5, 200), ("alice", 0.9, 403), ("bob", 0.1, 403)]
    for user, temperature, expected in cases:
        status, _, _ = await raw(
            gw,
            "POST",
            "rego-api",
            "/v1/chat/completions",
            json={**ALLOWED, "temperature": temperature},
            headers={"Authorization": f"Bearer {tokens[user]}"},
        )
        assert status == expected, (user, temperature)


def test_bad_rego_and_cel_are_rejected_at_apply(gw: Gateway, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: Policy\nmetadata: {name: bad-rego}\nspec:\n  rules:\n    - effect: ALLOW\n"
        "      condition: {opa: {inline: 'package x\n\nallow if {'}}\n"
    )
    result = gw.cluster.ctl("apply", "-f", str(bad))
    assert result.returncode == 1 and "spec.rules[0].condition.opa.inline" in result.stderr
    long = tmp_path / "long.yaml"
    long.write_text(
        "kind: Policy\nmetadata: {name: long}\nspec:\n  rules:\n    - effect: ALLOW\n"
        f"      condition: {{match: '{' || '.join(['true'] * 3000)}'}}\n"
    )
    result = gw.cluster.ctl("apply", "-f", str(long))
    assert result.returncode == 1 and "at most 10000 characters" in result.stderr
    assert "bad-rego" not in gw.cluster.ctl("get", "policies", check=True).stdout


async def test_admin_api_is_governed_by_policy(gw: Gateway) -> None:
    alice_pat = gw.client_secrets["alice-pat"]
    denied = gw.cluster.ctl("get", "services", env={**gw.cluster.env, "WARDGATE_TOKEN": alice_pat})
    assert denied.returncode == 1 and "denied by policy" in denied.stderr
    entry = next(e for e in reversed(gw.access_log()) if e.get("listener") == "admin" and e["status"] == 403)
    assert entry["user"] == "alice" and "no-rule-matched" in entry["reason"]
    root_token = await fetch_token_for_root(gw)
    allowed = gw.cluster.ctl("get", "services", env={**gw.cluster.env, "WARDGATE_TOKEN": root_token})
    assert allowed.returncode == 0 and "gemini" in allowed.stdout
    for kind, name in (("policy", "cluster-admins"), ("user", "root"), ("group", "admins")):
        refused = gw.cluster.ctl("delete", kind, name)
        assert refused.returncode == 1 and "cannot be deleted" in refused.stderr


async def fetch_token_for_root(gw: Gateway) -> str:
    secret = create_credential(gw.cluster, "root-oauth", "root", "oauth2")
    return await fetch_token(gw, "root-oauth", secret)


async def test_credential_expiry_bounds_its_sessions(gw: Gateway) -> None:
    secret = create_credential(gw.cluster, "short", "alice", "oauth2", "--expires-in", "3s")
    token = await fetch_token(gw, "short", secret)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=ALLOWED, headers=headers))[0] == 200
    await asyncio.sleep(3.5)
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=ALLOWED, headers=headers))[0] == 401
    with pytest.raises(Exception, match="invalid_client"):
        await fetch_token(gw, "short", secret)


HQ_REGO = """package wardgate.hq

allow if input.ctx.request.http.query.mode == "fast"
"""


async def test_policy_eval_and_the_gateway_decide_alike_on_headers_and_query(gw: Gateway, tmp_path: Path) -> None:
    """Same request, same decision and reason, through `wardgatectl policy eval` and through the gateway."""
    rules = [
        {"name": "no-debug", "effect": "DENY", "condition": {"match": "has(ctx.request.http.query.debug)"}},
        {"name": "creds-hidden", "effect": "DENY", "priority": -10,
         "condition": {"match": "'authorization' in ctx.request.http.headers"}},
        {"name": "team-ml", "effect": "ALLOW", "condition": {"match": "ctx.request.http.headers['x-team'] == 'ml'"}},
        {"name": "fast-mode", "effect": "ALLOW", "condition": {"opa": {"inline": HQ_REGO}}},
    ]  # fmt: skip
    service = {
        "kind": "Service",
        "metadata": {"name": "hq"},
        "spec": {
            "isPublic": True,
            "config": {
                "upstream": {"url": gw.fakes["openai"][1]},
                "http": {"auth": {"bearer": {"fromSecret": "openai-api-key"}}},
            },
            "authorization": {"inlinePolicies": [{"spec": {"rules": rules}}]},
        },
    }
    apply_docs(gw.cluster, [service], tmp_path)
    token = await fetch_token(gw, "alice-oauth", gw.client_secrets["alice"])
    cases: list[tuple[str, dict[str, str]]] = [
        ("/v1/chat/completions", {"X-Team": "ml"}),
        ("/v1/chat/completions?debug=1", {"X-Team": "ml"}),
        ("/v1/chat/completions", {"X-Team": "web"}),
        ("/v1/chat/completions?mode=fast", {}),
        ("/v1/chat/completions?mode=slow", {}),
        ("/v1/chat/completions?mode=fast&debug=", {"X-Team": "ml"}),
    ]
    keys = ("effect", "reason", "policy", "rule")
    for i, (path, headers) in enumerate(cases):
        status, _, _ = await raw(
            gw, "POST", "hq", path, json=ALLOWED, headers={"Authorization": f"Bearer {token}", **headers}
        )
        entry = (await gw.log_entries(i + 1, service="hq"))[i]
        on_gateway = {k: entry["decision"].get(k) for k in keys}
        args = ["policy", "eval", "--service", "hq", "--user", "alice", "--path", path, "-o", "json"]
        for name, value in {"Authorization": "Bearer whatever", **headers}.items():
            args += ["--header", f"{name}:{value}"]
        result = gw.cluster.ctl(*args, "--body", json.dumps(ALLOWED))
        evaluated = json.loads(result.stdout)["decision"]
        assert {k: evaluated.get(k) for k in keys} == on_gateway, (path, headers)
        assert (status == 200) == (on_gateway["effect"] == "ALLOW"), (path, headers, status)


def _group(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    inline = [{"spec": {"rules": rules}}]
    return {"kind": "Group", "metadata": {"name": name}, "spec": {"authorization": {"inlinePolicies": inline}}}


async def test_a_catch_all_group_rule_for_services_never_opens_the_admin_api(gw: Gateway, tmp_path: Path) -> None:
    """The escalation the attack suite found: ALLOW `matchAny: true` on a Group ("this team may use every
    Service") let its members read Secrets' metadata, mint a credential for root and use it."""
    everything = _group("dev", [{"effect": "ALLOW", "condition": {"matchAny": True}}])
    apply_docs(gw.cluster, [everything], tmp_path)
    token = await fetch_token(gw, "bob-oauth", gw.client_secrets["bob"])  # bob is in dev only
    as_bob = {"Authorization": f"Bearer {token}"}
    assert (await raw(gw, "POST", "gemini", "/v1/chat/completions", json=ALLOWED, headers=as_bob))[0] == 200
    ssl = gw.ssl_context()
    attempts = [
        ("GET", "/api/v1/secrets", None),
        ("GET", "/api/v1/secrets/gemini-api-key", None),
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/credentials", {"name": "pwn", "user": "root", "type": "access-token"}),
        ("PUT", "/api/v1/groups/admins", {"kind": "Group", "metadata": {"name": "admins"}, "spec": {}}),
        ("DELETE", "/api/v1/sessions/anything", None),
        ("POST", "/api/v1/policy/eval", {"service": "gemini", "user": "root"}),
        ("GET", "/agent/v1/watch", None),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, body in attempts:
            async with session.request(method, gw.cluster.url + path, json=body, headers=as_bob, ssl=ssl) as r:
                text = await r.text()
                assert r.status == 403, (method, path, r.status, text)
                assert "gemini-api-key" not in text and "wgt." not in text
    assert "pwn" not in gw.cluster.ctl("get", "credentials", check=True).stdout
    # A rule that names the admin scope does open it, for what it says.
    list_services = "ctx.request.http.method == 'GET' && ctx.request.http.path == '/api/v1/services'"
    scoped = _group(
        "dev",
        [
            {"effect": "ALLOW", "condition": {"matchAny": True}},
            {"effect": "ALLOW", "scope": "ADMIN", "condition": {"match": list_services}},
        ],
    )
    apply_docs(gw.cluster, [scoped], tmp_path)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.cluster.url + "/api/v1/services", headers=as_bob, ssl=ssl) as r:
            assert r.status == 200
        async with session.get(gw.cluster.url + "/api/v1/secrets", headers=as_bob, ssl=ssl) as r:
            assert r.status == 403
