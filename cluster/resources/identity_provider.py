"""IdentityProvider: an OIDC issuer for human browser login."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from wardgate.cluster.resources.meta import EmptyStatus, Model, Resource
from wardgate.cluster.resources.types import SecretRef


class IdentityProviderSpec(Model):
    display_name: str = ""
    issuer_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    user_claim: str = "email"

    @field_validator("issuer_url")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) issuer URL")
        return value


class IdentityProvider(Resource[IdentityProviderSpec, EmptyStatus]):
    """An IdentityProvider resource."""

    kind_name = "IdentityProvider"
    plural = "identityproviders"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
