"""Session: made by login or token exchange; deleting it revokes access at once."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource


class SessionType(StrEnum):
    CLIENT = "CLIENT"
    CLIENTLESS = "CLIENTLESS"


class SessionSpec(Model):
    user: Name
    credential: Name | None = None
    type: SessionType
    expires_at: datetime
    tunnel_ipv4: str | None = None
    tunnel_ipv6: str | None = None
    wg_public_key: str | None = None


class Session(Resource[SessionSpec, EmptyStatus]):
    """A Session resource."""

    kind_name = "Session"
    plural = "sessions"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
