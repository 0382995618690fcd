"""Domain errors of the cluster, independent of HTTP (cluster/api/errors.py maps them to statuses).

WardgateError
├── NotFound        the named resource does not exist
├── Conflict        it exists already, or changed since the caller read it
├── Invalid         the input is wrong; `problems` say where and why
├── Unauthenticated no valid credential, token or session
├── Forbidden       authenticated, but a policy denies
└── Unavailable     a dependency (the store file, an upstream) cannot serve now
"""

from __future__ import annotations


class WardgateError(Exception):
    """Base of the cluster's domain errors; `str()` is safe to show to the caller."""


class NotFound(WardgateError):
    pass


class Conflict(WardgateError):
    pass


class Invalid(WardgateError):
    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Unauthenticated(WardgateError):
    pass


class Forbidden(WardgateError):
    pass


class Unavailable(WardgateError):
    pass
