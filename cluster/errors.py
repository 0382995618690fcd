"""Domain errors of the cluster, independent of HTTP (cluster/api/errors.py maps them to statuses).

WardgateError
├── NotFound        the named resource does not exist
├── Conflict        it exists already, or changed since the caller read it
├── Invalid         the input is wrong; `problems` say where and why
├── Unauthenticated no valid credential, token or session
├── Forbidden       authenticated, but a policy denies
└── Unavailable     a dependency (the store file, an upstream) cannot serve now

Refused is the table of request refusals (status, error type and code, public message).
"""

from __future__ import annotations

from enum import Enum


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


class Refused(Enum):
    """The one table of refusals: every way a request is turned away, with its status and what the caller is
    told. The gateway renders these as OpenAI-style errors (its clients are LLM SDKs), the admin and
    cluster endpoints as problem JSON; the reason for the access log is given beside, never shown."""

    UNKNOWN_SERVICE = (404, "invalid_request_error", "not_found", "No service at this host.")
    UNAUTHENTICATED = (401, "invalid_request_error", "invalid_api_key", "A valid Wardgate access token is required.")
    NO_POLICIES = (403, "permission_denied", "forbidden", "Access denied.")
    NO_TUNNEL_SESSION = (
        403,
        "permission_denied",
        "no_session",
        "No live Wardgate session holds this tunnel address.",
    )
    FORBIDDEN = (403, "permission_denied", "forbidden", "Access denied by policy.")
    BAD_PATH = (400, "invalid_request_error", "invalid_path", "Invalid request path.")
    BAD_REQUEST = (400, "invalid_request_error", "bad_request", "The request is malformed.")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error", "method_not_allowed", "This method is not allowed.")
    TOO_LARGE = (413, "invalid_request_error", "request_too_large", "The request body is too large.")
    TOO_LARGE_TO_INSPECT = (
        413,
        "invalid_request_error",
        "request_too_large",
        "The request body is larger than this service inspects for its policies and plugins.",
    )
    NO_ROUTE = (404, "invalid_request_error", "no_route", "No upstream for this request.")
    PLUGIN_FAILED = (500, "server_error", "plugin_failed", "The gateway could not process this request.")
    UPSTREAM_AUTH = (
        500,
        "server_error",
        "upstream_auth_unavailable",
        "The gateway could not authenticate to the upstream.",
    )
    UPSTREAM_TIMEOUT = (504, "server_error", "upstream_timeout", "The upstream did not answer in time.")
    UPSTREAM_UNREACHABLE = (502, "server_error", "upstream_unreachable", "The upstream is unreachable.")
    UPSTREAM_FAILED = (502, "server_error", "upstream_unreachable", "The upstream failed.")
    UPSTREAM_TOO_LARGE = (502, "server_error", "upstream_response_too_large", "The upstream response is too large.")
    RATE_LIMITED = (429, "rate_limit_exceeded", "rate_limit_exceeded", "Rate limit reached.")
    QUOTA_EXHAUSTED = (429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota.")
    QUOTA_UNAVAILABLE = (
        503,
        "server_error",
        "quota_unavailable",
        "Usage limits cannot be checked right now; the request was not sent.",
    )
    NOT_ON_TUNNEL = (
        404,
        "invalid_request_error",
        "not_found",
        "The cluster's own endpoints are on https://<domain>, not the tunnel.",
    )

    def __init__(self, status: int, kind: str, code: str, message: str) -> None:
        self.status = status
        self.kind = kind
        self.code = code
        self.message = message
