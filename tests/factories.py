"""Valid resources with overrides, for tests."""

from __future__ import annotations

from typing import Any

from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.user import Group, User


def make_service(name: str = "svc", url: str = "http://127.0.0.1:9", **spec: Any) -> Service:
    body: dict[str, Any] = {"config": {"upstream": {"url": url}}, **spec}
    return Service.model_validate({"kind": "Service", "metadata": {"name": name}, "spec": body})


def make_user(name: str = "alice", groups: list[str] | None = None, type_: str = "HUMAN") -> User:
    return User.model_validate(
        {"kind": "User", "metadata": {"name": name}, "spec": {"type": type_, "groups": groups or []}}
    )


def make_group(name: str = "dev") -> Group:
    return Group.model_validate({"kind": "Group", "metadata": {"name": name}, "spec": {}})


def make_secret(name: str = "key", value: str = "s3cr3t-value") -> Secret:
    return Secret.model_validate(
        {"kind": "Secret", "metadata": {"name": name}, "spec": {"data": {"value": value}}}
    )


CLUSTER_MADE_DOCUMENTS: dict[str, dict[str, Any]] = {
    "Credential": {
        "kind": "Credential",
        "metadata": {"name": "forged"},
        "spec": {"type": "AUTH_TOKEN", "user": "alice"},
    },
    "Session": {
        "kind": "Session",
        "metadata": {"name": "forged"},
        "spec": {"user": "alice", "type": "CLIENTLESS", "expiresAt": "2030-01-01T00:00:00Z"},
    },
    "OAuthClient": {
        "kind": "OAuthClient",
        "metadata": {"name": "forged"},
        "spec": {"redirectUris": ["http://127.0.0.1:8765/callback"]},
    },
    "AuthorizationCode": {
        "kind": "AuthorizationCode",
        "metadata": {"name": "forged"},
        "spec": {
            "client": "forged",
            "user": "alice",
            "session": "forged",
            "redirectUri": "http://127.0.0.1:8765/callback",
            "codeChallenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "resource": "https://docs-mcp.example.com/mcp",
            "expiresAt": "2030-01-01T00:00:00Z",
        },
    },
    "Node": {
        "kind": "Node",
        "metadata": {"name": "forged"},
        "spec": {"wgPublicKey": "mG3Rz5U5Qn0yQ2q0g3Yv7JqkVnqgYbq7H1m1r9fXh1M=", "listenPort": 51820},
    },
    "AddressLease": {
        "kind": "AddressLease",
        "metadata": {"name": "forged"},
        "spec": {"address": "10.77.0.9", "session": "forged"},
    },
}
"""A valid manifest of each kind only the cluster makes (api/apply.py CLUSTER_MADE): apply and PUT refuse them."""
