"""Agent settings: `AgentConfig` (pydantic, frozen), loaded from a TOML file (configs/agent.example.toml)."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wardgate.agent.control import ClusterConnection
from wardgate.agent.dns import DnsSettings

DEFAULT_PATH = Path("/etc/wardgate/agent.toml")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(Exception):
    """The settings file is missing or invalid; the message says where and why."""


def default_node_name() -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return name[:63] or "node"


class AgentConfig(BaseModel):
    """`wardgate-agent --config FILE`. `interface` must match `[tunnel] interface` of the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    node: str = Field(default_factory=default_node_name)
    interface: str = Field(default="wardgate0", min_length=1, max_length=15)
    listen_port: int = Field(default=51820, ge=1, le=65535)
    endpoint: str | None = None
    """`host:port` clients dial; unset: the host they reach the cluster at, on `listen_port`."""
    state_dir: Path = Path("/var/lib/wardgate-agent")
    """Holds the node's WireGuard private key (0600), so clients keep working across restarts."""
    resync_interval: float = Field(default=2.0, gt=0, le=300)
    """How often the device is read back and repaired even when nothing changed (peers, a lost interface)."""
    report_interval: float = Field(default=5.0, gt=0, le=300)
    """How often the device's peers (handshakes, bytes) are reported to the cluster for its /metrics."""
    cluster: ClusterConnection
    dns: DnsSettings = Field(default_factory=DnsSettings)

    @field_validator("node")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS label")
        return value


def load(path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found (see configs/agent.example.toml)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    base = path.resolve().parent
    cluster = config.cluster.model_copy(
        update={
            "token_file": base / config.cluster.token_file,
            "ca_file": base / config.cluster.ca_file if config.cluster.ca_file else None,
        }
    )
    return config.model_copy(update={"cluster": cluster, "state_dir": base / config.state_dir})
