"""User and Group: who may act, and the authorization that follows them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource
from wardgate.cluster.resources.policy import Authorization


class UserType(StrEnum):
    HUMAN = "HUMAN"
    WORKLOAD = "WORKLOAD"


class UserSpec(Model):
    type: UserType
    groups: list[Name] = Field(default_factory=list)
    email: str | None = None
    is_disabled: bool = False
    authorization: Authorization = Field(default_factory=Authorization)

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and (value.count("@") != 1 or value.startswith("@") or value.endswith("@")):
            raise ValueError(f"{value!r} is not an email address")
        return value


class User(Resource[UserSpec, EmptyStatus]):
    """A User resource (a person or a workload)."""

    kind_name = "User"
    plural = "users"
    status: EmptyStatus = Field(default_factory=EmptyStatus)


class GroupSpec(Model):
    description: str = ""
    authorization: Authorization = Field(default_factory=Authorization)


class Group(Resource[GroupSpec, EmptyStatus]):
    """A Group resource; membership is declared on the User (`spec.groups`)."""

    kind_name = "Group"
    plural = "groups"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
