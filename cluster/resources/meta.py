"""Resource base: metadata, the `Resource[Spec, Status]` envelope and the model config every resource shares."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS label (lower-case letters, digits and '-', "
            "1 to 63 characters, starting and ending with a letter or digit)"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class Model(BaseModel):
    """Base of every resource part: unknown fields are errors, values are immutable, YAML uses camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )


class Metadata(Model):
    """Identity and bookkeeping of a resource.

    Users set `name`, `labels` and `annotations`; the store sets the rest. `resourceVersion` is the
    store's revision at the last write: sending it back on update makes the update conditional.
    """

    name: Name
    uid: str | None = None
    resource_version: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    managed_by: str | None = None


class EmptyStatus(Model):
    """Status of kinds that have none yet."""


SpecT = TypeVar("SpecT", bound=Model)
StatusT = TypeVar("StatusT", bound=Model)


class Resource(Model, Generic[SpecT, StatusT]):
    """The envelope: `kind`, `metadata`, `spec`, `status`.

    `kind` is checked against the class; `apiVersion` is accepted for familiarity and must be `v1`
    when present.
    """

    kind_name: ClassVar[str] = ""
    plural: ClassVar[str] = ""
    api_version: str = "v1"
    kind: str
    metadata: Metadata
    spec: SpecT
    status: StatusT

    @model_validator(mode="after")
    def _check_envelope(self) -> Resource[SpecT, StatusT]:
        if self.kind != self.kind_name:
            raise ValueError(f"kind must be {self.kind_name!r}, got {self.kind!r}")
        if self.api_version != "v1":
            raise ValueError(f"apiVersion must be 'v1', got {self.api_version!r}")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    def with_metadata(self, **changes: Any) -> Any:
        """A copy with metadata fields replaced (frozen models are never mutated)."""
        return self.model_copy(update={"metadata": self.metadata.model_copy(update=changes)})
