"""Pricing: what each model costs per million tokens (input, output, cached input), for cost and budgets."""

from __future__ import annotations

from pydantic import Field, field_validator

from wardgate.cluster.resources.meta import EmptyStatus, Model, Resource


class ModelPrice(Model):
    """Prices per million tokens. `model` is matched exactly, or as a prefix when it ends with `*`.
    `cachedInput` defaults to `input` (no discount)."""

    model: str = Field(min_length=1, max_length=200)
    input: float = Field(ge=0, le=10**6)
    output: float = Field(ge=0, le=10**6)
    cached_input: float | None = Field(default=None, ge=0, le=10**6)


class PricingSpec(Model):
    """Per-model prices in one currency. A model no Pricing names costs 0 (and a cost limit never stops it):
    name a `*` entry to price every other model."""

    currency: str = Field(default="USD", min_length=3, max_length=3)
    models: list[ModelPrice] = Field(min_length=1, max_length=1000)

    @field_validator("models")
    @classmethod
    def _unique(cls, value: list[ModelPrice]) -> list[ModelPrice]:
        seen: set[str] = set()
        for price in value:
            if price.model in seen:
                raise ValueError(f"model {price.model!r} is priced twice")
            seen.add(price.model)
        return value


class Pricing(Resource[PricingSpec, EmptyStatus]):
    """A Pricing resource."""

    kind_name = "Pricing"
    plural = "pricings"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
