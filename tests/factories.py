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
