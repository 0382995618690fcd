"""`[usage]` in cluster.toml: where quota counters live, and how long the usage ledger keeps its rows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wardgate.cluster.resources.types import parse_duration


class UsageSettings(BaseModel):
    """`redis`: a `redis://` (or `rediss://`) URL shared by every node: counters exact across nodes. Omitted:
    counters in a file shared by this node's workers (exact on one node; each node counts alone).
    `redisTimeout`: seconds before an unanswered counter call is a failure (the Quota's failMode decides).
    `retention`: how long ledger rows are kept (`90d`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    redis: str | None = None
    redis_timeout: float = Field(default=0.5, gt=0, le=30)
    retention: str = "90d"

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r} is not a redis:// URL")
        return value

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def retention_seconds(self) -> float:
        return parse_duration(self.retention)
