"""Policy: named, reusable rules, attached to Services, Users and Groups through their `authorization`."""

from __future__ import annotations

from pydantic import Field

from cluster.resources.common import PolicySpec
from cluster.resources.meta import EmptyStatus, Resource


class Policy(Resource[PolicySpec, EmptyStatus]):
    """A Policy resource."""

    kind_name = "Policy"
    plural = "policies"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
