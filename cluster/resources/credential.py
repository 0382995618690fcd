"""Credential and Secret: the kinds whose values are write-only."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, SecretStr, field_serializer

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource


class CredentialType(StrEnum):
    AUTH_TOKEN = "AUTH_TOKEN"
    OAUTH2 = "OAUTH2"
    ACCESS_TOKEN = "ACCESS_TOKEN"


class CredentialSpec(Model):
    type: CredentialType
    user: Name
    expires_at: datetime | None = None
    max_sessions: int | None = Field(default=None, ge=1)
    is_disabled: bool = False


class CredentialStatus(Model):
    """Set by the cluster: the token's SHA-256 (the token itself is shown once and never stored)."""

    token_sha256: str | None = None
    token_prefix: str | None = None


class Credential(Resource[CredentialSpec, CredentialStatus]):
    """A Credential resource; made with `wardgatectl create credential`, never applied from YAML."""

    kind_name = "Credential"
    plural = "credentials"
    status: CredentialStatus = Field(default_factory=CredentialStatus)


class SecretSpec(Model):
    """Key/value data. Values are `SecretStr`: they print as `**********` and leave only via `reveal()`."""

    data: dict[str, SecretStr] = Field(default_factory=dict)

    @field_serializer("data", when_used="json")
    def _redact(self, data: dict[str, SecretStr]) -> dict[str, str]:
        return {k: "**********" for k in data}

    def reveal(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.data.items()}


class Secret(Resource[SecretSpec, EmptyStatus]):
    """A Secret resource; its data is encrypted at rest and never returned by the API."""

    kind_name = "Secret"
    plural = "secrets"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
