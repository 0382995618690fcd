"""A running gateway for integration tests: the real cluster process, fake providers, users and tokens."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, RunningCluster
from tests.fakes.openai_provider import FakeOpenAI

GEMINI_KEY = "gemini-secret-AIza-0001"
OPENAI_KEY = "openai-secret-sk-0002"
DEEPSEEK_KEY = "deepseek-secret-0003"


@dataclass
class Gateway:
    cluster: RunningCluster
    fakes: dict[str, tuple[FakeOpenAI, str]]
    client_secrets: dict[str, str] = field(default_factory=dict)
    sdk_clients: list[Any] = field(default_factory=list)

    @property
    def ca(self) -> str:
        return str(self.cluster.home / "ca.crt")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def base_url(self, service: str) -> str:
        return self.cluster.public_url(service) + "/v1"

    def token_url(self) -> str:
        return self.cluster.public_url() + "/oauth2/token"

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cluster.access_log()]

    async def last_log(self, **match: Any) -> dict[str, Any]:
        """The newest access-log entry with these fields (the line lands just after the response)."""
        for _ in range(100):
            found = [e for e in self.access_log() if all(e.get(k) == v for k, v in match.items())]
            if found:
                return found[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no access-log entry with {match}")


def pointed_at_fakes(fakes: dict[str, str]) -> list[dict[str, Any]]:
    """The example manifests with every provider URL replaced by a fake's."""
    replace = {
        "https://generativelanguage.googleapis.com": fakes["gemini"],
        "https://api.openai.com": fakes["openai"],
        "https://api.deepseek.com": fakes["deepseek"],
    }
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "configs" / "resources").glob("*.yaml")):
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def apply_docs(cluster: RunningCluster, docs: list[dict[str, Any]], tmp: Path) -> None:
    path = tmp / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cluster.ctl("apply", "-f", str(path), check=True)


def create_credential(cluster: RunningCluster, name: str, user: str, kind: str, *extra: str) -> str:
    out = cluster.ctl("create", "credential", name, "--user", user, "--type", kind, *extra, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("token", "client_secret"):
            return value.strip()
    raise AssertionError(out)
