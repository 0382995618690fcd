"""Cluster settings: `<home>/cluster.toml`, composed of each component's settings, loaded with tomllib."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wardgate.cluster.errors import Invalid
from wardgate.cluster.identity.addresses import TunnelSettings
from wardgate.cluster.identity.oauth_clients import OAuthSettings
from wardgate.cluster.observability.otlp import TelemetrySettings
from wardgate.cluster.proxy.connections import ConnectionLimits
from wardgate.cluster.usage.settings import UsageSettings


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class AdminSettings(BaseModel):
    """The admin API listener (HTTPS, the cluster certificate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    listen: str = "127.0.0.1:9443"
    policies: list[str] = Field(default_factory=lambda: ["cluster-admins"])
    """Policies governing the admin API, merged with the caller's user and group rules."""

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)


class PublicSettings(BaseModel):
    """The public HTTPS listener: `<service>.<domain>` and the cluster endpoints on `<domain>`.

    `port` is the port clients use in URLs (it differs from the listen port behind a port forward)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    listen: str = "0.0.0.0:443"
    port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)

    def external_port(self) -> int:
        return self.port if self.port is not None else int(self.listen.rpartition(":")[2])


class StoreSettings(BaseModel):
    """The SQLite file (`path`, one node), or `url = "postgresql://..."`: several nodes share that database."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = "store.db"
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{value!r} is not a postgresql:// URL")
        return value


class NodeSettings(BaseModel):
    """This node: `name` labels its access log, metrics and traces (default: the host name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = Field(default=None, min_length=1, max_length=63)


class LogSettings(BaseModel):
    """Access log: JSON lines to this file (relative to the home) and to stdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    access_log: str = "access.log"
    stdout: bool = True


class ClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str
    admin: AdminSettings = Field(default_factory=AdminSettings)
    public: PublicSettings = Field(default_factory=PublicSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    node: NodeSettings = Field(default_factory=NodeSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tunnel: TunnelSettings = Field(default_factory=TunnelSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    limits: ConnectionLimits = Field(default_factory=ConnectionLimits)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)


def base_url(settings: ClusterSettings) -> str:
    """`https://<domain>` with the public port when it is not 443: the issuer and the token endpoint's base."""
    port = settings.public.external_port()
    return f"https://{settings.domain}" + ("" if port == 443 else f":{port}")


def _merged(shared: dict[str, object], local: dict[str, object]) -> dict[str, object]:
    """The cluster-wide settings with this node's own (listeners, store, name) laid over them, table by table."""
    merged = dict(shared)
    for key, value in local.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = {**below, **value}
        else:
            merged[key] = value
    return merged


class Home:
    """The files of a cluster home directory (written by `wardgate-cluster init`)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.settings = self.root / "cluster.toml"
        self.ca_cert = self.root / "ca.crt"
        self.ca_key = self.root / "ca.key"
        self.tls_cert = self.root / "tls.crt"
        self.tls_key = self.root / "tls.key"
        self.store_key = self.root / "store.key"
        self.signing_key = self.root / "signing.key"
        self.admin_token = self.root / "admin.token"
        self.ctl_config = self.root / "wardgatectl.toml"
        self.shared_settings = self.root / "cluster.shared.toml"
        """A node of a PostgreSQL cluster: the cluster-wide settings, fetched from the database at each start."""

    def path(self, relative: str) -> Path:
        return self.root / relative

    def load(self) -> ClusterSettings:
        try:
            raw = tomllib.loads(self.settings.read_text())
            if self.shared_settings.exists():
                raw = _merged(tomllib.loads(self.shared_settings.read_text()), raw)
        except FileNotFoundError:
            raise Invalid(f"{self.settings} not found: run `wardgate-cluster init --home {self.root}`") from None
        except tomllib.TOMLDecodeError as exc:
            raise Invalid(f"{self.settings}: {exc}") from None
        try:
            return ClusterSettings.model_validate(raw)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            ]
            raise Invalid(f"{self.settings}: " + "; ".join(problems), problems) from None
